//! The simulated bucket: a versioned in-memory store whose every call goes through the
//! scheduler, plus the S3 -> SQS event queue that feeds the simulated functions.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use s3dock_core::events::ObjectEvent;
use s3dock_core::layout::{self, BucketKey};
use s3dock_core::names::ObjectKey;
use s3dock_core::store::{
    BoxReader, ETag, GetObject, GetOptions, ListPage, MemoryStore, ObjectInfo, ObjectStore, Precondition,
    PreconditionSupport, PutOptions, StoreError, read_to_vec, reader_from_bytes,
};

use super::sched::{Decision, GateKind, Sched};

/// One notification in the queue.
#[derive(Debug, Clone)]
pub struct QueuedEvent {
    pub event: ObjectEvent,
    /// Not delivered before this step (delays).
    pub not_before: u64,
    /// Identifies the notification (a duplicate delivery carries the same id).
    pub id: u64,
    /// Deliveries so far (the DLQ takes it after too many).
    pub receives: u32,
}

/// The S3 -> SQS queue of the simulated stack: at-least-once, late, duplicated, reordered.
#[derive(Debug, Default)]
pub struct EventQueue {
    events: Mutex<Vec<QueuedEvent>>,
    next: Mutex<u64>,
    /// Off in inline mode: nothing is queued.
    pub enabled: bool,
}

impl EventQueue {
    pub fn new(enabled: bool) -> Self {
        EventQueue { enabled, ..Default::default() }
    }

    pub fn push(&self, event: ObjectEvent, not_before: u64) {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        *next += 1;
        let id = *next;
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(QueuedEvent { event, not_before, id, receives: 0 });
    }

    pub fn requeue(&self, e: QueuedEvent) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }

    pub fn ready(&self, step: u64) -> bool {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|e| e.not_before <= step)
    }

    pub fn is_empty(&self) -> bool {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Takes one ready event at random (reordering); with `dup`, leaves a copy behind.
    pub fn take(&self, sched: &Sched, step: u64, dup: bool) -> Option<QueuedEvent> {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let ready: Vec<usize> = (0..events.len()).filter(|&i| events[i].not_before <= step).collect();
        if ready.is_empty() {
            return None;
        }
        let i = ready[sched.pick(ready.len())];
        let e = if dup { events[i].clone() } else { events.remove(i) };
        Some(e)
    }
}

/// The bucket every simulated actor talks to.
#[derive(Debug)]
pub struct SimStore {
    pub inner: Arc<MemoryStore>,
    pub sched: Arc<Sched>,
    pub queue: Arc<EventQueue>,
    /// How many steps an event may be held back.
    pub max_delay: u64,
}

fn injected(what: &str, key: &str) -> StoreError {
    StoreError::other(format!("injected: {what} on {key}"), true)
}

/// Whether the stack's bucket notifications fire for a write at `key`.
fn notifies(key: &ObjectKey) -> bool {
    matches!(
        layout::classify(key),
        Ok(BucketKey::ImageMetadata { .. }) | Ok(BucketKey::Tag { .. }) | Ok(BucketKey::Pointer { .. })
    )
}

impl SimStore {
    /// What happens after a write reached the bucket: an event, if the key notifies.
    fn after_write(&self, key: &ObjectKey, r: &Result<ObjectInfo, StoreError>, notify: bool) {
        if !notify || !self.queue.enabled || !notifies(key) {
            return;
        }
        if let Ok(info) = r {
            let ev = ObjectEvent {
                key: Some(key.clone()),
                raw_key: key.to_string(),
                event_name: "ObjectCreated:Put".into(),
                etag: Some(info.etag.0.clone()),
                version_id: info.version_id.clone(),
                size: Some(info.size),
                principal: Some("sim".into()),
                event_time: info.last_modified,
                ..Default::default()
            };
            let delay = if self.max_delay > 0 { self.sched.pick(self.max_delay as usize + 1) as u64 } else { 0 };
            self.queue.push(ev, self.sched.step() + delay);
        }
    }

    async fn gate(&self, kind: GateKind, desc: String) -> Decision {
        self.sched.gate(kind, desc).await
    }

    async fn crash<T>(&self) -> T {
        // The scheduler drops this actor's future; it is never polled again.
        std::future::pending().await
    }

    /// Runs a write through the scheduler's decision. `apply` performs it once.
    async fn write<F, Fut>(
        &self,
        desc: String,
        key: &ObjectKey,
        notify: bool,
        apply: F,
    ) -> Result<ObjectInfo, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<ObjectInfo, StoreError>>,
    {
        match self.gate(GateKind::Write, desc.clone()).await {
            Decision::Proceed => {
                let r = apply().await;
                self.after_write(key, &r, notify);
                r
            }
            Decision::FailBefore => Err(injected("503", key.as_str())),
            Decision::Throttle => Err(injected("SlowDown", key.as_str())),
            Decision::LoseResponse => {
                let r = apply().await;
                self.after_write(key, &r, notify);
                // The SDK retries the identical request; the caller sees the retry's answer.
                self.gate(GateKind::Retry, format!("retry {desc}")).await;
                let again = apply().await;
                self.after_write(key, &again, notify);
                again
            }
            Decision::Crash { apply: applied } => {
                if applied {
                    let r = apply().await;
                    self.after_write(key, &r, notify);
                }
                self.crash().await
            }
        }
    }

    async fn read_gate(&self, desc: String, key: &str) -> Result<(), StoreError> {
        match self.gate(GateKind::Read, desc).await {
            Decision::Proceed | Decision::LoseResponse => Ok(()),
            Decision::FailBefore => Err(injected("503", key)),
            Decision::Throttle => Err(injected("SlowDown", key)),
            Decision::Crash { .. } => self.crash().await,
        }
    }
}

fn short(p: &Precondition) -> String {
    match p {
        Precondition::None => String::new(),
        Precondition::IfAbsent => " if-absent".into(),
        Precondition::IfMatch(e) => format!(" if-match {}", e.normalized()),
    }
}

#[async_trait]
impl ObjectStore for SimStore {
    fn url(&self) -> String {
        "sim://bucket".into()
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, StoreError> {
        self.read_gate(format!("head {key}"), key.as_str()).await?;
        self.inner.head(key).await
    }

    async fn get(&self, key: &ObjectKey, opts: GetOptions) -> Result<GetObject, StoreError> {
        let v = opts.version_id.as_deref().map(|v| format!(" @{v}")).unwrap_or_default();
        self.read_gate(format!("get {key}{v}"), key.as_str()).await?;
        self.inner.get(key, opts).await
    }

    async fn put_bytes(&self, key: &ObjectKey, body: Bytes, p: Precondition) -> Result<ObjectInfo, StoreError> {
        let desc = format!("put {key}{}", short(&p));
        self.write(desc, key, true, || self.inner.put_bytes(key, body.clone(), p.clone())).await
    }

    async fn put_stream(&self, key: &ObjectKey, body: BoxReader, opts: PutOptions) -> Result<ObjectInfo, StoreError> {
        // The parts upload invisibly; what other actors can observe is the completion, so the
        // scheduling point is there, after the commit check.
        let bytes = read_to_vec(body)
            .await
            .map_err(|e| StoreError::Io { context: format!("reading the body for {key}"), source: e })?;
        if let Some(check) = opts.commit_check {
            check().await.map_err(|reason| StoreError::Aborted { key: key.to_string(), reason })?;
        }
        let desc = format!("complete {key}{}", short(&opts.precondition));
        let (p, write_id) = (opts.precondition.clone(), opts.write_id.clone());
        let bytes = Bytes::from(bytes);
        let first = std::sync::Mutex::new(None::<ObjectInfo>);
        self.write(desc, key, true, || {
            let (p, write_id, bytes) = (p.clone(), write_id.clone(), bytes.clone());
            let first = &first;
            async move {
                // A retried CompleteMultipartUpload of an upload that completed answers with
                // the same object when unconditional; a conditional one fails its condition.
                if p == Precondition::None
                    && let Some(done) = first.lock().unwrap_or_else(|x| x.into_inner()).clone()
                {
                    return Ok(done);
                }
                let r = self
                    .inner
                    .put_stream(
                        key,
                        reader_from_bytes(bytes),
                        PutOptions { precondition: p, write_id, ..Default::default() },
                    )
                    .await;
                if let Ok(info) = &r {
                    *first.lock().unwrap_or_else(|x| x.into_inner()) = Some(info.clone());
                }
                r
            }
        })
        .await
    }

    async fn list_page(&self, prefix: &str, delimited: bool, token: Option<String>) -> Result<ListPage, StoreError> {
        self.read_gate(format!("list {prefix}"), prefix).await?;
        self.inner.list_page(prefix, delimited, token).await
    }

    async fn copy(&self, src: &ObjectKey, dst: &ObjectKey, p: Precondition) -> Result<ObjectInfo, StoreError> {
        let desc = format!("copy {src} -> {dst}{}", short(&p));
        self.write(desc, dst, true, || self.inner.copy(src, dst, p.clone())).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let info = |_: ()| ObjectInfo::new(key.clone(), 0, ETag(String::new()));
        self.write(format!("delete {key}"), key, false, || async { self.inner.delete(key).await.map(info) })
            .await
            .map(|_| ())
    }

    async fn delete_if(&self, key: &ObjectKey, etag: &ETag) -> Result<(), StoreError> {
        let info = |_: ()| ObjectInfo::new(key.clone(), 0, ETag(String::new()));
        let desc = format!("delete {key} if-match {}", etag.normalized());
        self.write(desc, key, false, || async { self.inner.delete_if(key, etag).await.map(info) }).await.map(|_| ())
    }

    fn precondition_support(&self) -> PreconditionSupport {
        PreconditionSupport::Native
    }
}
