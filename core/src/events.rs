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
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EventError {
    pub message: String,
    pub retryable: bool,
}

impl From<Error> for EventError {
    fn from(e: Error) -> Self {
        EventError { retryable: e.is_retryable(), message: e.to_string() }
    }
}

impl From<StoreError> for EventError {
    fn from(e: StoreError) -> Self {
        Error::from(e).into()
    }
}

/// A document of a newer schema: retried, never judged. It waits in the DLQ after the
/// queue's receive limit until the functions are upgraded and the DLQ is redriven.
fn newer_schema(e: &DocError) -> EventError {
    EventError {
        message: format!(
            "{e}; this function is older than the s3dock that wrote it: upgrade the functions, then redrive the dead-letter queue (the document is left untouched)"
        ),
        retryable: true,
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Cli,
    Lambda,
    Agent,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Cli => "cli",
            Origin::Lambda => "lambda",
            Origin::Agent => "agent",
        }
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
            referenced.extend(self.pointers_following(app, tag_key).await?);
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

    /// Pointers whose target is the tag file at `tag_key`.
    async fn pointers_following(&self, app: &AppName, tag_key: &ObjectKey) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for o in list_all(&*self.store, &layout::pointers_prefix(app)).await? {
            let Ok(BucketKey::Pointer { env, .. }) = layout::classify(&o.key) else { continue };
            let Some((b, _)) = read_small(&*self.store, &o.key, docs::MAX_DOC_BYTES).await? else { continue };
            match docs::decode::<PointerDoc>(o.key.as_str(), &b) {
                Ok(p) if p.target_path == tag_key.as_str() => out.push(format!("environment {env}")),
                Ok(_) => {}
                Err(_) => out.push(format!("unreadable pointer {}", o.key)),
            }
        }
        Ok(out)
    }

    /// `images/**.json` created: verify the archive against its metadata, then audit `push`;
    /// a current metadata document whose archive does not match is rejected.
    pub async fn verify_upload(
        &self,
        app: &AppName,
        meta_key: &ObjectKey,
        ev: &ObjectEvent,
        verification: Verification,
    ) -> Result<Outcome, EventError> {
        let Ok(BucketKey::ImageMetadata { tag, .. }) = layout::classify(meta_key) else {
            return Ok(Outcome::Ignored { reason: format!("{meta_key} is not image metadata") });
        };
        let image = ImageRef::new(app.clone(), tag.clone());
        let stem = layout::image_stem(app, &tag);
        let doc = match self.read_event_doc(meta_key, ev).await? {
            Read::Doc(d) => d,
            Read::Gone(reason) => return Ok(Outcome::Superseded { reason, audit_key: None }),
        };
        let meta_suspect =
            Suspect { key: meta_key.clone(), info: doc.info.clone(), stem: stem.clone(), ext: layout::JSON_EXT };
        let meta: ImageMetadata = match docs::decode(meta_key.as_str(), &doc.bytes) {
            Ok(m) => m,
            Err(e @ DocError::UnsupportedVersion { .. }) => return Err(newer_schema(&e)),
            Err(e) if !doc.current => {
                return Ok(Outcome::Superseded {
                    reason: format!("an unreadable version, since replaced: {e}"),
                    audit_key: None,
                });
            }
            Err(e) => {
                let mut suspects = vec![meta_suspect];
                let beside = layout::archive_beside_metadata(meta_key);
                if let Some(a) = beside
                    && let Some(info) = self.store.head(&a).await?
                {
                    suspects.push(Suspect { key: a, info, stem, ext: layout::ARCHIVE_EXT });
                }
                let r = Rejection {
                    image: Some(&image),
                    suspects: &suspects,
                    hash7: tag.hash7(),
                    reason: e.to_string(),
                    tag_followers: None,
                };
                return self.reject(app, r, ev).await;
            }
        };
        let expected_ref = image.to_string();
        if meta.app_name != app.as_str() || meta.image_tag != expected_ref {
            if !doc.current {
                return Ok(Outcome::Superseded {
                    reason: format!("a misfiled version of {meta_key}, since replaced"),
                    audit_key: None,
                });
            }
            let reason = format!("metadata names {} ({}) but lives at {meta_key}", meta.image_tag, meta.app_name);
            let suspects = [meta_suspect];
            let r =
                Rejection { image: Some(&image), suspects: &suspects, hash7: tag.hash7(), reason, tag_followers: None };
            return self.reject(app, r, ev).await;
        }
        let wid8: String = meta.write_id.as_deref().unwrap_or("").chars().take(8).collect();
        let audit_key =
            layout::audit(app, meta.created_at, EventType::Push.as_str(), tag.hash7(), &[&meta.content_id8(), &wid8]);
        if self.store.head(&audit_key).await?.is_some() {
            return Ok(Outcome::Duplicate { audit_key });
        }
        let archive_key = bucket::archive_key(meta_key, &meta)
            .ok_or_else(|| EventError { message: format!("{meta_key}: no archive key"), retryable: false })?;
        let mut current = doc.current;
        // The whole-object digests this handler computed (a download), recorded in the audit.
        let mut whole: Option<Digests> = None;
        let verified = if !current {
            // Replaced by a later push before this event was handled: that push archived this
            // content. The push happened, so it is recorded; nothing else is judged.
            "superseded"
        } else {
            let judged = match self.digest_archive(&archive_key, &meta, &verification).await? {
                Ok((actual, how)) => {
                    let checked = if meta.is_composed() {
                        // Its ranges were checked against the index as they were read; the
                        // whole-object digests are what this handler learnt, recorded below.
                        (actual.size == meta.size)
                            .then_some(())
                            .ok_or_else(|| format!("{archive_key} holds {} bytes, not {}", actual.size, meta.size))
                    } else {
                        crate::digest::verify((&meta).into(), &actual).map_err(|m| m.to_string())
                    };
                    if actual.md5.is_empty() {
                        checked.map(|()| (how, None))
                    } else {
                        checked.map(|()| (how, Some(actual)))
                    }
                }
                Err(reason) => Err(reason),
            };
            match judged {
                Ok((how, actual)) => {
                    whole = actual;
                    how
                }
                Err(reason) => {
                    // A re-push may have swapped metadata and archive while the archive was read:
                    // then what was judged is no longer current, and nothing is rejected.
                    let now = self.store.head(meta_key).await?;
                    if now.is_some_and(|n| n.etag == doc.info.etag) {
                        return self.reject_image(app, &image, meta_suspect, &archive_key, &meta, reason, ev).await;
                    }
                    current = false;
                    "superseded"
                }
            }
        };
        let mut rec = self.record(
            EventType::Push,
            app,
            meta.created_at,
            meta.pushed_by.as_deref().unwrap_or(&self.actor),
            (&meta.git_hash, &meta.git_time),
        );
        rec.principal = ev.principal.clone();
        rec.details = serde_json::to_value(PushDetails {
            image_reference: expected_ref,
            s3_path: archive_key.to_string(),
            // A composed archive's metadata has no whole-object digests: record the ones read.
            checksum: match &whole {
                Some(d) if meta.checksum.is_empty() => d.md5.clone(),
                _ => meta.checksum.clone(),
            },
            size: meta.size,
            was_skipped: false,
            was_archived: meta.archived_previous.is_some(),
            sha256: meta.sha256.clone().or_else(|| whole.as_ref().map(|d| d.sha256.clone())),
            image_id: meta.image_id.clone(),
            metadata_path: Some(meta_key.to_string()),
            verified: Some(verified.to_owned()),
            pushed_by: meta.pushed_by.clone(),
            forced: meta.replaced.as_ref().is_some_and(|r| r.forced),
            replaced_image_id: meta.replaced.as_ref().and_then(|r| r.image_id.clone()),
        })
        .unwrap_or_default();
        let created = bucket::write_audit(&*self.store, &*self.clock, &audit_key, &rec).await?;
        match (created, current) {
            (false, _) => Ok(Outcome::Duplicate { audit_key }),
            (true, true) => Ok(Outcome::Recorded { audit_key, notified: vec![] }),
            (true, false) => Ok(Outcome::Superseded {
                reason: format!("{meta_key} was replaced before this event was handled; recorded unverified"),
                audit_key: Some(audit_key),
            }),
        }
    }

    /// The archive's digests, or why the archive is unusable (`Ok(Err(reason))`).
    async fn digest_archive(
        &self,
        archive_key: &ObjectKey,
        meta: &ImageMetadata,
        verification: &Verification,
    ) -> Result<Result<(Digests, &'static str), String>, EventError> {
        let etag = meta.archive_etag.as_ref().map(|e| ETag(e.clone()));
        match verification {
            Verification::Streamed(d) => {
                let Some(info) = self.store.head(archive_key).await? else {
                    return Ok(Err(format!("{archive_key} is missing")));
                };
                if let Some(want) = &etag
                    && &info.etag != want
                {
                    return Ok(Err(format!(
                        "{archive_key} is not the object this metadata committed (ETag {})",
                        info.etag
                    )));
                }
                if info.size != d.size {
                    return Ok(Err(format!("{archive_key} holds {} bytes but {} were uploaded", info.size, d.size)));
                }
                Ok(Ok((d.clone(), "streamed")))
            }
            Verification::Download => {
                let opts = GetOptions { if_match: etag, ..Default::default() };
                let obj = match self.store.get(archive_key, opts).await {
                    Ok(o) => o,
                    Err(e) if e.is_not_found() => return Ok(Err(format!("{archive_key} is missing"))),
                    Err(e) if e.is_precondition_failed() => {
                        return Ok(Err(format!("{archive_key} is not the object this metadata committed")));
                    }
                    Err(e) => return Err(e.into()),
                };
                // Never read more than the metadata promises (plus one byte to notice more).
                let mut reader = HashingReader::new(obj.body.take(meta.size.saturating_add(1)));
                let handle = reader.handle();
                // An indexed archive is checked range by range too; a composed one relies on it.
                let mut ranges = meta.layers.as_ref().map(|l| crate::layers::RangeChecker::new(l.ranges.clone()));
                let mut bad_range: Option<String> = None;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = reader
                        .read(&mut buf)
                        .await
                        .map_err(|e| EventError { message: format!("reading {archive_key}: {e}"), retryable: true })?;
                    if n == 0 {
                        break;
                    }
                    if let (Some(r), None) = (&mut ranges, &bad_range) {
                        bad_range = r.feed(&buf[..n]).err();
                    }
                }
                if let (Some(r), None) = (&ranges, &bad_range) {
                    bad_range = r.finish().err();
                }
                if let Some(why) = bad_range {
                    return Ok(Err(format!("{archive_key}: {why}")));
                }
                let Some(d) = handle.digests() else {
                    return Err(EventError { message: format!("{archive_key}: read ended early"), retryable: true });
                };
                Ok(Ok((d, "download")))
            }
        }
    }

    /// Rejects a current metadata document and the archive it names.
    #[allow(clippy::too_many_arguments)]
    async fn reject_image(
        &self,
        app: &AppName,
        image: &ImageRef,
        meta_suspect: Suspect,
        archive_key: &ObjectKey,
        meta: &ImageMetadata,
        reason: String,
        ev: &ObjectEvent,
    ) -> Result<Outcome, EventError> {
        let stem = meta_suspect.stem.clone();
        let mut suspects = vec![meta_suspect];
        if let Some(info) = self.store.head(archive_key).await? {
            suspects.push(Suspect { key: archive_key.clone(), info, stem, ext: layout::ARCHIVE_EXT });
        }
        let _ = meta;
        let r = Rejection {
            image: Some(image),
            suspects: &suspects,
            hash7: image.tag.hash7(),
            reason,
            tag_followers: None,
        };
        self.reject(app, r, ev).await
    }

    /// Rejects a tag file (kept in place while a pointer follows it).
    async fn reject_tag(
        &self,
        app: &AppName,
        suspect: Suspect,
        hash7: &str,
        reason: String,
        key: &ObjectKey,
        ev: &ObjectEvent,
    ) -> Result<Outcome, EventError> {
        let suspects = [suspect];
        let r = Rejection { image: None, suspects: &suspects, hash7, reason, tag_followers: Some(key) };
        self.reject(app, r, ev).await
    }

    /// `tags/**.json` created: check the target image exists, then audit `tag`. A current tag
    /// whose target is missing or whose document is unreadable is archived and audited
    /// `reject`, and deleted only when no pointer follows it.
    pub async fn record_tag(
        &self,
        app: &AppName,
        version: &Version,
        key: &ObjectKey,
        ev: &ObjectEvent,
    ) -> Result<Outcome, EventError> {
        let doc = match self.read_event_doc(key, ev).await? {
            Read::Doc(d) => d,
            Read::Gone(reason) => return Ok(Outcome::Superseded { reason, audit_key: None }),
        };
        let suspect = || Suspect {
            key: key.clone(),
            info: doc.info.clone(),
            stem: layout::tag_archive_stem(version),
            ext: layout::JSON_EXT,
        };
        let tag_doc: TagDoc = match docs::decode(key.as_str(), &doc.bytes) {
            Ok(d) => d,
            Err(e @ DocError::UnsupportedVersion { .. }) => return Err(newer_schema(&e)),
            Err(e) if !doc.current => {
                return Ok(Outcome::Superseded {
                    reason: format!("an unreadable version, since replaced: {e}"),
                    audit_key: None,
                });
            }
            Err(e) => return self.reject_tag(app, suspect(), "unknown", e.to_string(), key, ev).await,
        };
        let image = match bucket::target_image(app, &tag_doc.target_path) {
            Ok(i) => i,
            Err(reason) if doc.current => {
                return self.reject_tag(app, suspect(), "unknown", reason, key, ev).await;
            }
            Err(reason) => return Ok(Outcome::Superseded { reason, audit_key: None }),
        };
        if doc.current && bucket::find_metadata(&*self.store, &image).await?.is_none() {
            let reason = format!("{key} targets {image}, which is not in the bucket");
            return self.reject_tag(app, suspect(), image.tag.hash7(), reason, key, ev).await;
        }
        // The version alone is not the tag's identity: a forced move away and back within a
        // minute writes two documents. The digest of this document's bytes is (and is the same
        // for every redelivery of the same write).
        let doc_id = hex::encode(&<md5::Md5 as sha2::Digest>::digest(&doc.bytes)[..4]);
        let audit_key = layout::audit(
            app,
            tag_doc.promoted_at,
            EventType::Tag.as_str(),
            image.tag.hash7(),
            &[&version.canonical(), &doc_id],
        );
        let mut rec = self.record(
            EventType::Tag,
            app,
            tag_doc.promoted_at,
            &tag_doc.promoted_by,
            (&tag_doc.git_hash, &tag_doc.git_time),
        );
        rec.principal = ev.principal.clone();
        rec.details = serde_json::to_value(TagDetails {
            image_reference: image.to_string(),
            version: version.canonical(),
            tag_path: key.to_string(),
            forced: tag_doc.previous.is_some(),
            previous_target: tag_doc
                .previous
                .as_ref()
                .map(|p| p.source_image.clone().unwrap_or_else(|| p.target_path.clone())),
            archived_to: tag_doc.archived_to.clone(),
        })
        .unwrap_or_default();
        if !bucket::write_audit(&*self.store, &*self.clock, &audit_key, &rec).await? {
            return Ok(Outcome::Duplicate { audit_key });
        }
        if doc.current {
            Ok(Outcome::Recorded { audit_key, notified: vec![] })
        } else {
            Ok(Outcome::Superseded {
                reason: format!("{key} was moved again since; recorded"),
                audit_key: Some(audit_key),
            })
        }
    }

    /// `pointers/**.json` created: audit `promotion` (or `rollback`) with the previous target,
    /// then, if that version is still the current pointer, send one message to every fresh
    /// agent registered for the app and environment.
    pub async fn fan_out_promotion(
        &self,
        app: &AppName,
        env: &EnvName,
        key: &ObjectKey,
        ev: &ObjectEvent,
    ) -> Result<Outcome, EventError> {
        let doc = match self.read_event_doc(key, ev).await? {
            Read::Doc(d) => d,
            Read::Gone(reason) => return Ok(Outcome::Superseded { reason, audit_key: None }),
        };
        let pointer: PointerDoc = match docs::decode(key.as_str(), &doc.bytes) {
            Ok(d) => d,
            Err(e @ DocError::UnsupportedVersion { .. }) => return Err(newer_schema(&e)),
            Err(e) => return self.audit_bad_pointer(app, env, key, e.to_string(), ev, &doc).await,
        };
        let image = match bucket::resolve_doc(&*self.store, app, &pointer).await {
            Ok(i) => i,
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(e) => return self.audit_bad_pointer(app, env, key, e.to_string(), ev, &doc).await,
        };
        // A pointer to an image that is not in the bucket would send agents after nothing.
        if bucket::find_metadata(&*self.store, &image).await?.is_none() {
            let reason = format!("{key} points to {image}, which is not in the bucket");
            return self.audit_bad_pointer(app, env, key, reason, ev, &doc).await;
        }
        let event =
            if pointer.action == Some(PointerAction::Rollback) { EventType::Rollback } else { EventType::Promotion };
        let seq = pointer.seq();
        let audit_key = layout::audit(
            app,
            pointer.promoted_at,
            event.as_str(),
            image.tag.hash7(),
            &[env.as_str(), &format!("seq{seq}")],
        );
        // Handled before (the record exists): nothing to write, nothing to send.
        if self.store.head(&audit_key).await?.is_some() {
            return Ok(Outcome::Duplicate { audit_key });
        }
        // Only the current pointer is announced: a late event for an old promotion sends
        // nothing stale.
        let targets = if doc.current && self.notifier.is_some() { self.agent_queues(app, env).await? } else { vec![] };
        // Send first, record after: a run killed between the two is redelivered and sends again
        // (agents act once per pointer seq, so a repeated message changes nothing), while
        // recording first would leave the agents of a killed run unnotified until their next
        // reconcile.
        let notified = self.notify(app, env, &image, &pointer, &targets).await;
        let mut rec =
            self.record(event, app, pointer.promoted_at, &pointer.promoted_by, (&pointer.git_hash, &pointer.git_time));
        rec.principal = ev.principal.clone();
        rec.details = serde_json::to_value(PromotionDetails {
            environment: env.to_string(),
            source: pointer.describe_target(),
            source_type: pointer.target_type.to_string(),
            pointer_path: key.to_string(),
            previous_target: pointer.previous.as_ref().map(|p| match p.target_type {
                docs::TargetType::Tag => p.source_tag.clone().unwrap_or_else(|| p.target_path.clone()),
                docs::TargetType::Image => p.source_image.clone().unwrap_or_else(|| p.target_path.clone()),
            }),
            seq: Some(seq),
            image_reference: Some(image.to_string()),
            notified: notified.clone(),
        })
        .unwrap_or_default();
        // Another delivery may have recorded it meanwhile: then this one is the duplicate.
        if !bucket::write_audit(&*self.store, &*self.clock, &audit_key, &rec).await? {
            return Ok(Outcome::Duplicate { audit_key });
        }
        if doc.current {
            Ok(Outcome::Recorded { audit_key, notified })
        } else {
            Ok(Outcome::Superseded {
                reason: format!("{key} moved on since; recorded, nobody notified"),
                audit_key: Some(audit_key),
            })
        }
    }

    /// Sends the promotion message to each target queue, [`FANOUT_CONCURRENCY`] at a time,
    /// retrying transient errors a few times; returns the agents reached, sorted. An agent not
    /// reached converges at its next reconcile.
    async fn notify(
        &self,
        app: &AppName,
        env: &EnvName,
        image: &ImageRef,
        pointer: &PointerDoc,
        targets: &[(String, String)],
    ) -> Vec<String> {
        let Some(notifier) = &self.notifier else { return vec![] };
        let msg = PromotionMessage {
            schema_version: SCHEMA_VERSION,
            kind: "promotion".into(),
            app: app.clone(),
            env: env.clone(),
            image: image.to_string(),
            pointer_seq: pointer.seq(),
            time: pointer.promoted_at,
        };
        // Serializing a struct of strings and numbers cannot fail.
        let body = serde_json::to_string(&msg).expect("promotion messages serialize");
        // One message per agent queue (SQS batches only within one queue), FANOUT_CONCURRENCY
        // at a time: 1,000 agents take a few seconds rather than minutes (docs/benchmarks.md).
        let mut notified: Vec<String> = futures::stream::iter(targets.iter().cloned())
            .map(|(id, url)| {
                let (notifier, body, clock) = (notifier.clone(), body.clone(), self.clock.clone());
                async move { notify_agent(&*notifier, &*clock, &id, &url, &body).await }
            })
            .buffer_unordered(FANOUT_CONCURRENCY)
            .filter_map(|sent| async move { sent })
            .collect()
            .await;
        notified.sort();
        notified
    }

    async fn audit_bad_pointer(
        &self,
        app: &AppName,
        env: &EnvName,
        key: &ObjectKey,
        reason: String,
        ev: &ObjectEvent,
        doc: &EventDoc,
    ) -> Result<Outcome, EventError> {
        // A pointer is live state: it is not moved away, only reported. Nothing is sent.
        let at = doc.info.last_modified.or(ev.event_time).unwrap_or_else(|| self.clock.now());
        let mut rec = self.record(EventType::Reject, app, at, &self.actor, ("", ""));
        rec.principal = ev.principal.clone();
        rec.details = serde_json::to_value(ArchiveDetails {
            path: key.to_string(),
            reason: reason.clone(),
            ..Default::default()
        })
        .unwrap_or_default();
        // The document's digest names this write: redeliveries share it, other writes do not.
        let doc_id = hex::encode(&<md5::Md5 as sha2::Digest>::digest(&doc.bytes)[..4]);
        let audit_key = layout::audit(app, at, EventType::Reject.as_str(), "unknown", &[env.as_str(), &doc_id]);
        bucket::write_audit(&*self.store, &*self.clock, &audit_key, &rec).await?;
        tracing::error!(pointer = %key, reason = %reason, "bad pointer: audited, no agent notified");
        Ok(Outcome::Rejected { reason, archived_to: vec![], audit_key: Some(audit_key), deleted: false })
    }

    /// Fresh registrations with an acceptable queue: `(agent id, queue url)`.
    async fn agent_queues(&self, app: &AppName, env: &EnvName) -> Result<Vec<(String, String)>, StoreError> {
        let now = self.clock.now();
        let objects = list_all(&*self.store, &layout::agents_prefix(app, Some(env))).await?;
        let regs = futures::stream::iter(objects)
            .map(|o| async move { (read_small(&*self.store, &o.key, docs::MAX_DOC_BYTES).await, o.key) })
            .buffer_unordered(FANOUT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut out = Vec::new();
        let mut prepared = false;
        for (res, key) in regs {
            let Some((bytes, _)) = res? else { continue };
            let reg: AgentRegistration = match docs::decode(key.as_str(), &bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(registration = %key, error = %e, "skipping an unreadable agent registration");
                    continue;
                }
            };
            if &reg.app_name != app || &reg.environment != env {
                tracing::warn!(registration = %key, "skipping a registration filed under another app or environment");
                continue;
            }
            if now - reg.last_heartbeat > self.agent_ttl {
                tracing::info!(agent = %reg.agent_id, last = %reg.last_heartbeat, "skipping a stale agent");
                continue;
            }
            let Some(url) = reg.queue_url else { continue };
            if let Some(n) = &self.notifier
                && !prepared
            {
                if let Err(e) = n.prepare().await {
                    tracing::warn!(error = %e, "cannot notify the agents of this promotion; they converge at their next reconcile");
                    return Ok(vec![]);
                }
                prepared = true;
            }
            if let Some(n) = &self.notifier
                && let Err(why) = n.check_queue(&url)
            {
                tracing::warn!(agent = %reg.agent_id, queue = %url, reason = %why, "skipping an agent queue");
                continue;
            }
            out.push((reg.agent_id.to_string(), url));
        }
        out.sort();
        Ok(out)
    }
}

/// Requests the promotion fan-out keeps in flight at once: registration reads, then messages.
/// Each agent has its own queue and SQS batches only within one queue, so a fleet costs one
/// SendMessage per agent; bounded concurrency keeps 1,000 agents within seconds without
/// opening a connection per agent.
pub const FANOUT_CONCURRENCY: usize = 32;

/// Sends one agent its message; `Some(agent id)` once sent. Transient SQS errors are retried
/// here, bounded, because the promotion is recorded right after: a retry of the whole event
/// would find the record and send nothing.
async fn notify_agent(notifier: &dyn Notifier, clock: &dyn Clock, id: &str, url: &str, body: &str) -> Option<String> {
    let mut attempt = 0;
    loop {
        match notifier.send(url, body).await {
            Ok(()) => return Some(id.to_owned()),
            Err(e) if e.retryable && attempt < 3 => {
                attempt += 1;
                Backoff::TRANSIENT.wait(clock, attempt).await;
            }
            Err(e) => {
                tracing::error!(agent = %id, queue = %url, error = %e, "could not notify an agent; it converges at its next reconcile");
                return None;
            }
        }
    }
}
