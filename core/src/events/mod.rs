//! The event handlers: what happens after an object is written. The Lambda functions run them
//! on S3 events; with `events = "inline"` the CLI runs the very same code in-process right
//! after its own writes, so a bucket without the stack still gets its audit trail.
//!
//! Events are hints, delivered at least once, possibly late, duplicated or out of order, and
//! in a versioned bucket they name the version they are about. The rules:
//!
//! - **Act on the named version, and destroy only while it is current.** A handler reads the
//!   version its event names (by version id, or the bytes the inline writer passes) and
//!   compares its ETag with the current object. Facts are recorded whatever the version (a
//!   push or a tag happened even if a later one replaced it), but nothing is rejected,
//!   archived away or deleted unless the named version is still the current one, and every
//!   delete is conditional on the ETag inspected (`delete_if`).
//! - **Nothing referenced is deleted by an event.** A bad upload or tag is copied to
//!   `archive/` and audited as `reject`; it is deleted only when no tag, pointer or agent
//!   references it, after taking the delete lease (`bucket::lease`). Otherwise it stays, and
//!   the handler logs an error for the alarm.
//! - **A newer schema is never judged.** A document this build cannot read because it is
//!   newer fails the event retryably: it waits in the DLQ for a redrive once the functions are
//!   upgraded.
//! - **Exactly once.** An audit key is derived from the audited fact's identity (the pointer's
//!   seq, the version and the document's digest, the checksum and write id, the rejected
//!   version's ETag), never from the time of handling, and is created with `If-None-Match: *`.
//!   Each handler run stamps its record with a fresh write id, so a run whose response was lost
//!   still knows it created the record. A promotion is announced before it is recorded, and a
//!   delivery that finds the record sends nothing: a run killed between the two is redelivered
//!   and announces again (agents act once per pointer seq), so no agent is left unnotified.

use std::sync::Arc;
use strum::{Display, EnumIter, EnumString, IntoStaticStr};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use crate::bucket::{self, lease};
use crate::clock::{Backoff, Clock, new_write_id};
use crate::digest::{Digests, HashingReader};
use crate::docs::{
    self, AgentRegistration, ArchiveDetails, AuditRecord, DocError, EventType, ImageMetadata, PointerAction,
    PointerDoc, PromotionDetails, PromotionMessage, PushDetails, SCHEMA_VERSION, TagDetails, TagDoc,
};
use crate::error::Error;
use crate::layout::{self, BucketKey};
use crate::names::{AppName, EnvName, ImageRef, ObjectKey, Version};
use crate::store::{ETag, GetOptions, ObjectInfo, ObjectStore, StoreError, list_all, read_small};

mod promotion;
mod tag;
mod verify;

pub use promotion::FANOUT_CONCURRENCY;

/// One object-created event, from S3 or from the CLI's own write.
#[derive(Debug, Clone, Default)]
pub struct ObjectEvent {
    /// Already URL-decoded.
    pub key: Option<ObjectKey>,
    /// The raw key as it arrived, for messages about keys that failed to decode.
    pub raw_key: String,
    pub event_name: String,
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub size: Option<u64>,
    /// The identity S3 saw writing the object (`userIdentity.principalId`).
    pub principal: Option<String>,
    /// When S3 saw the write (`eventTime`).
    pub event_time: Option<DateTime<Utc>>,
    /// The exact bytes written, when the writer handles its own event (inline mode): the
    /// version named is then this one even in a bucket without versioning.
    pub written: Option<Bytes>,
}

impl ObjectEvent {
    /// An event about `key` that names no version: the handler takes the object there now, as
    /// for an event from a bucket without versioning.
    pub fn for_key(key: ObjectKey) -> Self {
        ObjectEvent {
            raw_key: key.to_string(),
            key: Some(key),
            event_name: "ObjectCreated:Put".into(),
            ..Default::default()
        }
    }

    /// An event for a write this process just made: its bytes and the ETag the store gave it.
    pub fn written(key: ObjectKey, etag: &ETag, bytes: Bytes) -> Self {
        ObjectEvent {
            raw_key: key.to_string(),
            key: Some(key),
            event_name: "ObjectCreated:Put".into(),
            etag: Some(etag.0.clone()),
            written: Some(bytes),
            ..Default::default()
        }
    }
}

/// What a handler did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not an event s3dock acts on.
    Ignored { reason: String },
    /// An audit record was written (and, for promotions, agents notified).
    Recorded { audit_key: ObjectKey, notified: Vec<String> },
    /// The event was handled before: nothing written, nothing sent.
    Duplicate { audit_key: ObjectKey },
    /// The event names a version that is no longer current: its fact was recorded (when it
    /// could be read), nothing was judged, archived or deleted, nobody was notified.
    Superseded { reason: String, audit_key: Option<ObjectKey> },
    /// The object was bad: copied to `archive/` and audited as `reject`; deleted only when
    /// nothing referenced it (`deleted`).
    Rejected { reason: String, archived_to: Vec<ObjectKey>, audit_key: Option<ObjectKey>, deleted: bool },
}

/// A failed event. `retryable` drives the Lambda's answer: retryable errors fail the item so
/// it is redelivered; permanent ones are logged (and audited where possible) and acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// A registry or store failure, retried when [`Error::is_retryable`] says so.
    #[error(transparent)]
    Core(#[from] Error),
    /// Anything else: a queue, the function's settings, a document too new to judge.
    #[error("{message}")]
    Other { message: String, retryable: bool },
}

impl EventError {
    /// A failure that redelivery cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        EventError::Other { message: message.into(), retryable: false }
    }

    /// A failure that may pass when the event is delivered again.
    pub fn transient(message: impl Into<String>) -> Self {
        EventError::Other { message: message.into(), retryable: true }
    }

    /// Whether the event should be delivered again.
    pub fn is_retryable(&self) -> bool {
        match self {
            EventError::Core(e) => e.is_retryable(),
            EventError::Other { retryable, .. } => *retryable,
        }
    }
}

impl From<StoreError> for EventError {
    fn from(e: StoreError) -> Self {
        EventError::Core(e.into())
    }
}

/// A document of a newer schema: retried, never judged. It waits in the DLQ after the
/// queue's receive limit until the functions are upgraded and the DLQ is redriven.
fn newer_schema(e: &DocError) -> EventError {
    EventError::transient(format!(
        "{e}; this function is older than the s3dock that wrote it: upgrade the functions, then redrive the dead-letter queue (the document is left untouched)"
    ))
}

/// Delivers promotion messages to agent queues.
#[async_trait]
pub trait Notifier: Send + Sync + std::fmt::Debug {
    /// Called once per fan-out, before the first [`Notifier::check_queue`], and only when a
    /// registration names a queue: a notifier that must look something up first (the CLI's
    /// asks STS for the account id its queue rules need) does it here, so promoting an
    /// environment without agents costs no request. Failing here skips the notifications of
    /// this fan-out (the agents converge at their next reconcile); the audit record is kept.
    async fn prepare(&self) -> Result<(), EventError> {
        Ok(())
    }

    /// Whether messages may go to this queue (same account and region, a well-formed URL).
    fn check_queue(&self, queue_url: &str) -> Result<(), String>;
    async fn send(&self, queue_url: &str, body: &str) -> Result<(), EventError>;
}

/// Where `recorded_by` says a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoStaticStr, Display, EnumString, EnumIter)]
#[strum(serialize_all = "lowercase")]
pub enum Origin {
    Cli,
    Lambda,
    Agent,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What the caller already knows about an upload it verifies.
#[derive(Debug, Clone)]
pub enum Verification {
    /// Download the archive and hash it (the Lambda verifier).
    Download,
    /// The writer hashed the bytes while uploading them (inline push): compare those digests
    /// and the stored size instead of reading the archive again.
    Streamed(Digests),
}

/// The version of a document an event names.
struct EventDoc {
    bytes: Bytes,
    /// That version's ETag and write time.
    info: ObjectInfo,
    /// Whether that version is still the current object.
    current: bool,
}

/// What a handler found when it read the event's document.
enum Read {
    Doc(EventDoc),
    /// Deleted (or, in a bucket without versioning, replaced) before the event was handled.
    Gone(String),
}

/// What a handler found bad, and what could reference it.
struct Rejection<'a> {
    /// The image whose objects these are (uploads), for references and the delete lease.
    image: Option<&'a ImageRef>,
    suspects: &'a [Suspect],
    hash7: &'a str,
    reason: String,
    /// A tag file: pointers that follow it keep it in place.
    tag_followers: Option<&'a ObjectKey>,
}

/// One object found bad: the version judged, and how to name its archive copy.
struct Suspect {
    key: ObjectKey,
    info: ObjectInfo,
    stem: String,
    ext: &'static str,
}

/// The handlers, over an injected store, clock and notifier.
#[derive(Debug, Clone)]
pub struct Handlers {
    pub store: Arc<dyn ObjectStore>,
    pub clock: Arc<dyn Clock>,
    pub notifier: Option<Arc<dyn Notifier>>,
    /// Registrations whose heartbeat is older than this are not notified.
    pub agent_ttl: Duration,
    pub origin: Origin,
    /// The acting user for records whose document names none.
    pub actor: String,
}

impl Handlers {
    pub fn new(store: Arc<dyn ObjectStore>, clock: Arc<dyn Clock>, origin: Origin, actor: impl Into<String>) -> Self {
        Handlers { store, clock, notifier: None, agent_ttl: Duration::minutes(10), origin, actor: actor.into() }
    }

    pub fn with_notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    fn record(&self, event: EventType, app: &AppName, at: DateTime<Utc>, user: &str, git: (&str, &str)) -> AuditRecord {
        AuditRecord {
            schema_version: Some(SCHEMA_VERSION),
            event_type: event.as_str().to_owned(),
            timestamp: at,
            user: user.to_owned(),
            app_name: app.to_string(),
            git_hash: git.0.to_owned(),
            git_time: git.1.to_owned(),
            details: serde_json::Value::Null,
            principal: None,
            recorded_by: Some(self.origin.as_str().to_owned()),
            // Fresh per handler run: a redelivery is another run, so it never takes a record
            // (or a fan-out claim) it did not create for its own.
            write_id: Some(new_write_id(&*self.clock)),
        }
    }

    /// Routes one event to its handler by key.
    pub async fn handle(&self, ev: &ObjectEvent) -> Result<Outcome, EventError> {
        let Some(key) = &ev.key else {
            return Ok(Outcome::Ignored { reason: format!("{:?} is not a valid object key", ev.raw_key) });
        };
        if !ev.event_name.is_empty() && !ev.event_name.starts_with("ObjectCreated") {
            return Ok(Outcome::Ignored { reason: format!("{} events are not handled", ev.event_name) });
        }
        match layout::classify(key) {
            Ok(BucketKey::ImageMetadata { app, .. }) => self.verify_upload(&app, key, ev, Verification::Download).await,
            Ok(BucketKey::Tag { app, version }) => self.record_tag(&app, &version, key, ev).await,
            Ok(BucketKey::Pointer { app, env }) => self.fan_out_promotion(&app, &env, key, ev).await,
            Ok(other) => Ok(Outcome::Ignored { reason: format!("{key}: {other:?} objects need no handling") }),
            Err(e) => Ok(Outcome::Ignored { reason: e.to_string() }),
        }
    }

    /// Reads the version of `key` the event names, and whether it is still current.
    ///
    /// The version is the bytes the inline writer passes, else the `versionId` the event names
    /// (a versioned bucket, as the stack creates), else the current object: in a bucket without
    /// versioning a late event can only be about what is there now, which is judged as current
    /// (consistently: its own metadata and archive), never mixed with an older document.
    async fn read_event_doc(&self, key: &ObjectKey, ev: &ObjectEvent) -> Result<Read, StoreError> {
        let current = self.store.head(key).await?;
        if let Some(bytes) = &ev.written {
            let etag = ev.etag.as_ref().map(|e| ETag(e.clone())).unwrap_or_else(|| ETag(String::new()));
            let is_current = current.as_ref().is_some_and(|c| c.etag == etag);
            let mut info = ObjectInfo::new(key.clone(), bytes.len() as u64, etag);
            info.last_modified =
                current.as_ref().filter(|_| is_current).and_then(|c| c.last_modified).or(Some(self.clock.now()));
            return Ok(Read::Doc(EventDoc { bytes: bytes.clone(), info, current: is_current }));
        }
        let opts = GetOptions { version_id: ev.version_id.clone(), ..Default::default() };
        let obj = match self.store.get(key, opts).await {
            Ok(o) => o,
            Err(e) if e.is_not_found() => return Ok(Read::Gone(format!("{key} no longer exists"))),
            Err(e) => return Err(e),
        };
        let mut buf = Vec::new();
        obj.body
            .take(docs::MAX_DOC_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| StoreError::Io { context: format!("reading {key}"), source: e })?;
        let is_current = current.as_ref().is_some_and(|c| c.etag == obj.info.etag);
        let mut info = obj.info;
        if info.last_modified.is_none() {
            info.last_modified = current.as_ref().and_then(|c| c.last_modified);
        }
        Ok(Read::Doc(EventDoc { bytes: Bytes::from(buf), info, current: is_current }))
    }

    /// Archives the suspects (the versions judged), decides whether they may be deleted, audits
    /// `reject` with that decision, then deletes what may go. `referenced` lists what still
    /// references them (refs are read again after the delete lease is taken).
    async fn reject(&self, app: &AppName, r: Rejection<'_>, ev: &ObjectEvent) -> Result<Outcome, EventError> {
        let Rejection { image, suspects, hash7, reason, tag_followers } = r;
        let mut archived = Vec::new();
        let mut ours = Vec::new();
        for s in suspects {
            match bucket::archive_version(&*self.store, &s.key, &s.info, app, &s.stem, "rejected", s.ext).await {
                Ok(dst) => {
                    archived.push(dst);
                    ours.push(s);
                }
                // Replaced or deleted since it was judged: not this handler's to touch.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        // What may be deleted: nothing referenced, nothing someone is about to reference.
        let mut referenced = Vec::new();
        let mut tomb = None;
        if let Some(image) = image {
            match lease::claim(&*self.store, &*self.clock, image, &self.actor).await? {
                Ok(t) => tomb = Some(t),
                Err(spared) => referenced.push(format!("{spared:?} (a command is referencing it right now)")),
            }
            if tomb.is_some() {
                referenced.extend(bucket::references(&*self.store, image).await?);
            }
        }
        if let Some(tag_key) = tag_followers {
            referenced.extend(bucket::pointers_following(&*self.store, app, tag_key).await?);
        }
        let delete =
            referenced.is_empty() && !ours.is_empty() && tomb.as_ref().is_none_or(|t| t.check_time(&*self.clock));
        let judged = suspects.first().map(|s| &s.info);
        let at = judged.and_then(|i| i.last_modified).unwrap_or_else(|| self.clock.now());
        let etag8: String = judged
            .map(|i| i.etag.normalized().chars().filter(char::is_ascii_alphanumeric).take(8).collect())
            .unwrap_or_default();
        let mut rec = self.record(EventType::Reject, app, at, &self.actor, ("", ""));
        rec.principal = ev.principal.clone();
        rec.details = serde_json::to_value(ArchiveDetails {
            path: suspects.first().map(|s| s.key.to_string()).unwrap_or_default(),
            reason: reason.clone(),
            archived_to: archived.iter().map(|k| k.to_string()).collect(),
            image_reference: image.map(|i| i.to_string()),
            deleted: delete,
            referenced_by: referenced.clone(),
        })
        .unwrap_or_default();
        // Named by the rejected version, so a redelivery finds this record.
        let audit_key = layout::audit(app, at, EventType::Reject.as_str(), hash7, &[&etag8]);
        let written = bucket::write_audit(&*self.store, &*self.clock, &audit_key, &rec).await;
        let mut deleted = false;
        if delete && written.is_ok() {
            // The commit marker first, so no reader finds metadata whose archive is gone; each
            // delete only if the object is still the version judged.
            deleted = true;
            for s in &ours {
                match self.store.delete_if(&s.key, &s.info.etag).await {
                    Ok(()) => {}
                    Err(e) if e.is_precondition_failed() || e.is_not_found() => deleted = false,
                    Err(e) => {
                        if let Some(t) = tomb.take() {
                            t.release(&*self.store).await;
                        }
                        return Err(e.into());
                    }
                }
            }
        }
        if let Some(t) = tomb {
            t.release(&*self.store).await;
        }
        written?;
        if deleted {
            tracing::warn!(reason = %reason, archived = ?archived, "rejected an upload: archived and deleted");
        } else {
            tracing::error!(
                reason = %reason,
                archived = ?archived,
                referenced_by = ?referenced,
                "ALARM: a bad object stays in place because something references it (or it changed meanwhile); it was copied to archive/ — fix or re-push it"
            );
        }
        Ok(Outcome::Rejected { reason, archived_to: archived, audit_key: Some(audit_key), deleted })
    }
}

#[cfg(test)]
mod origin_tests {
    use strum::IntoEnumIterator;

    use super::Origin;

    /// The `recorded_by` words: `as_str`, `Display` and `FromStr` (strum) agree.
    #[test]
    fn origin_words() {
        let words: Vec<&str> = Origin::iter().map(Origin::as_str).collect();
        assert_eq!(words, ["cli", "lambda", "agent"]);
        for o in Origin::iter() {
            assert_eq!(o.to_string(), o.as_str());
            assert_eq!(o.as_str().parse::<Origin>(), Ok(o));
        }
    }
}
