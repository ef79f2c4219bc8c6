//! The event handlers: what happens after an object is written. The Lambda functions run them
//! on S3 events; with `events = "inline"` the CLI runs the very same code in-process right
//! after its own writes, so a bucket without the stack still gets its audit trail.
//!
//! Events are hints, delivered at least once, possibly late, duplicated or out of order.
//! Every handler is idempotent: an audit key is derived from the audited fact's identity (the
//! pointer's seq, the version, the checksum), never from the time of handling, and is created
//! with `If-None-Match: *`, so a redelivered event finds its record already there and does
//! nothing. The promotion record doubles as the claim for the fan-out: only the delivery that
//! created it sends the agents their messages, so ten deliveries send one message per agent.
//! A message lost after the claim only delays an agent until its next periodic reconcile.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use crate::clock::Clock;
use crate::digest::{Digests, HashingReader};
use crate::docs::{
    self, AgentRegistration, ArchiveDetails, AuditRecord, EventType, ImageMetadata, PointerAction, PointerDoc,
    PromotionDetails, PromotionMessage, PushDetails, SCHEMA_VERSION, TagDetails, TagDoc,
};
use crate::error::Error;
use crate::layout::{self, BucketKey};
use crate::names::{AppName, EnvName, ImageRef, ImageTag, ObjectKey, Version};
use crate::store::{GetOptions, ObjectStore, Precondition, StoreError, list_all, read_small};

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
    /// When S3 saw the write (`eventTime`); names records of facts that carry no time of their
    /// own (an unreadable document), so redeliveries find the same record.
    pub event_time: Option<DateTime<Utc>>,
}

impl ObjectEvent {
    /// An event for a write this process just made.
    pub fn inline(key: ObjectKey) -> Self {
        ObjectEvent {
            raw_key: key.to_string(),
            key: Some(key),
            event_name: "ObjectCreated:Put".into(),
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
    /// The object was bad: moved to `archive/` and audited as `reject`.
    Rejected { reason: String, archived_to: Vec<ObjectKey>, audit_key: Option<ObjectKey> },
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
    fn as_str(self) -> &'static str {
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

/// Writes an audit record exactly once: `Ok(true)` if this call created it.
pub async fn write_audit(store: &dyn ObjectStore, key: &ObjectKey, record: &AuditRecord) -> Result<bool, StoreError> {
    match store.put_bytes(key, Bytes::from(docs::encode(record)), Precondition::IfAbsent).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_precondition_failed() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Copies `src` to a fresh archive key built by `name(n)`, trying numbered suffixes until a
/// name is free. Archive objects are never overwritten: each copy is a conditional create.
pub async fn archive_copy(
    store: &dyn ObjectStore,
    src: &ObjectKey,
    name: impl Fn(&str) -> ObjectKey,
) -> Result<ObjectKey, StoreError> {
    for n in 0..100u32 {
        let suffix = if n == 0 { String::new() } else { n.to_string() };
        let dst = name(&suffix);
        match store.copy(src, &dst, Precondition::IfAbsent).await {
            Ok(_) => return Ok(dst),
            Err(e) if e.is_precondition_failed() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Other { message: format!("no free archive name for {src} after 100 tries"), retryable: false })
}

/// Objects found bad, with what names their rejection in the audit trail.
#[derive(Clone, Copy)]
struct Suspect<'a> {
    app: &'a AppName,
    /// The archive month folder.
    month: &'a str,
    /// `(key, archive stem, extension)`, the commit marker first.
    keys: &'a [(ObjectKey, String, &'a str)],
    hash7: &'a str,
    discriminator: &'a str,
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
            Ok(BucketKey::Pointer { app, env }) => self.fan_out_promotion(&app, &env, key, ev, None).await,
            Ok(other) => Ok(Outcome::Ignored { reason: format!("{key}: {other:?} objects need no handling") }),
            Err(e) => Ok(Outcome::Ignored { reason: e.to_string() }),
        }
    }

    /// Reads the version of `key` the event names (or the current one).
    async fn read_event_doc(&self, key: &ObjectKey, ev: &ObjectEvent) -> Result<Option<Bytes>, StoreError> {
        let opts = GetOptions { version_id: ev.version_id.clone(), ..Default::default() };
        let obj = match self.store.get(key, opts).await {
            Ok(o) => o,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = Vec::new();
        obj.body
            .take(docs::MAX_DOC_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| StoreError::Io { context: format!("reading {key}"), source: e })?;
        Ok(Some(Bytes::from(buf)))
    }

    /// Moves the suspect's keys to `archive/` as rejected, deleting the originals, and audits
    /// `reject`.
    async fn reject(&self, suspect: Suspect<'_>, reason: String, ev: &ObjectEvent) -> Result<Outcome, EventError> {
        let Suspect { app, month, keys, hash7, discriminator } = suspect;
        let now = self.clock.now();
        let mut archived = Vec::new();
        for (key, stem, ext) in keys {
            if self.store.head(key).await?.is_none() {
                continue;
            }
            let dst = archive_copy(&*self.store, key, |n| {
                let suffix = if n.is_empty() { "rejected".to_owned() } else { format!("rejected-{n}") };
                layout::archive(app, month, stem, now, &suffix, ext)
            })
            .await?;
            archived.push(dst);
        }
        // Delete in commit order reversed: metadata (the commit marker) first, then the bytes,
        // so no reader ever finds metadata without its archive.
        for (key, _, _) in keys {
            self.store.delete(key).await?;
        }
        let mut rec = self.record(EventType::Reject, app, now, &self.actor, ("", ""));
        rec.principal = ev.principal.clone();
        rec.details = serde_json::to_value(ArchiveDetails {
            path: keys.first().map(|k| k.0.to_string()).unwrap_or_default(),
            reason: reason.clone(),
            archived_to: archived.iter().map(|k| k.to_string()).collect(),
            image_reference: None,
        })
        .unwrap_or_default();
        let audit_key = layout::audit(app, now, EventType::Reject.as_str(), hash7, &[discriminator]);
        write_audit(&*self.store, &audit_key, &rec).await?;
        tracing::warn!(reason = %reason, archived = ?archived, "rejected an upload");
        Ok(Outcome::Rejected { reason, archived_to: archived, audit_key: Some(audit_key) })
    }

    /// `images/**.json` created: verify the archive against its metadata, then audit `push`;
    /// on a mismatch move the pair to `archive/` and audit `reject`.
    pub async fn verify_upload(
        &self,
        app: &AppName,
        meta_key: &ObjectKey,
        ev: &ObjectEvent,
        verification: Verification,
    ) -> Result<Outcome, EventError> {
        let Ok(BucketKey::ImageMetadata { month, tag, .. }) = layout::classify(meta_key) else {
            return Ok(Outcome::Ignored { reason: format!("{meta_key} is not image metadata") });
        };
        let archive_key = layout::archive_beside_metadata(meta_key)
            .ok_or_else(|| EventError { message: format!("{meta_key}: no archive key"), retryable: false })?;
        let stem = layout::image_stem(app, &tag);
        let Some(bytes) = self.read_event_doc(meta_key, ev).await? else {
            return Ok(Outcome::Ignored {
                reason: format!("{meta_key} no longer exists (handled before, or replaced)"),
            });
        };
        let pair = [
            (meta_key.clone(), stem.clone(), layout::JSON_EXT),
            (archive_key.clone(), stem.clone(), layout::ARCHIVE_EXT),
        ];
        let meta: ImageMetadata = match docs::decode(meta_key.as_str(), &bytes) {
            Ok(m) => m,
            Err(e) => {
                return self
                    .reject(
                        Suspect { app, month: &month, keys: &pair, hash7: tag.hash7(), discriminator: "malformed" },
                        e.to_string(),
                        ev,
                    )
                    .await;
            }
        };
        let suspect = Suspect { app, month: &month, keys: &pair, hash7: tag.hash7(), discriminator: &meta.checksum };
        let expected_ref = ImageRef::new(app.clone(), tag.clone()).to_string();
        if meta.app_name != app.as_str() || meta.image_tag != expected_ref {
            let reason = format!("metadata names {} ({}) but lives at {meta_key}", meta.image_tag, meta.app_name);
            return self.reject(suspect, reason, ev).await;
        }
        let audit_key =
            layout::audit(app, meta.created_at, EventType::Push.as_str(), tag.hash7(), &[&meta.checksum[..8]]);
        if self.store.head(&audit_key).await?.is_some() {
            return Ok(Outcome::Duplicate { audit_key });
        }
        let (actual, how) = match verification {
            Verification::Streamed(d) => {
                let Some(info) = self.store.head(&archive_key).await? else {
                    let reason = format!("{archive_key} is missing");
                    return self.reject(suspect, reason, ev).await;
                };
                if info.size != d.size {
                    let reason = format!("{archive_key} holds {} bytes but {} were uploaded", info.size, d.size);
                    return self.reject(suspect, reason, ev).await;
                }
                (d, "streamed")
            }
            Verification::Download => match self.store.get(&archive_key, GetOptions::default()).await {
                Ok(obj) => {
                    let mut reader = HashingReader::new(obj.body);
                    let handle = reader.handle();
                    let mut sink = tokio::io::sink();
                    tokio::io::copy(&mut reader, &mut sink)
                        .await
                        .map_err(|e| EventError { message: format!("reading {archive_key}: {e}"), retryable: true })?;
                    let Some(d) = handle.digests() else {
                        return Err(EventError {
                            message: format!("{archive_key}: read ended early"),
                            retryable: true,
                        });
                    };
                    (d, "download")
                }
                Err(e) if e.is_not_found() => {
                    let reason = format!("{archive_key} is missing");
                    return self.reject(suspect, reason, ev).await;
                }
                Err(e) => return Err(e.into()),
            },
        };
        if let Err(mismatch) = crate::digest::verify((&meta).into(), &actual) {
            return self.reject(suspect, mismatch.to_string(), ev).await;
        }
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
            checksum: meta.checksum.clone(),
            size: meta.size,
            was_skipped: false,
            was_archived: meta.archived_previous.is_some(),
            sha256: meta.sha256.clone(),
            image_id: meta.image_id.clone(),
            metadata_path: Some(meta_key.to_string()),
            verified: Some(how.to_owned()),
            pushed_by: meta.pushed_by.clone(),
        })
        .unwrap_or_default();
        if write_audit(&*self.store, &audit_key, &rec).await? {
            Ok(Outcome::Recorded { audit_key, notified: vec![] })
        } else {
            Ok(Outcome::Duplicate { audit_key })
        }
    }

    /// `tags/**.json` created: check the target image exists, then audit `tag`. A tag whose
    /// target is missing or whose document is unreadable is archived and audited `reject`.
    pub async fn record_tag(
        &self,
        app: &AppName,
        version: &Version,
        key: &ObjectKey,
        ev: &ObjectEvent,
    ) -> Result<Outcome, EventError> {
        let Some(bytes) = self.read_event_doc(key, ev).await? else {
            return Ok(Outcome::Ignored { reason: format!("{key} no longer exists") });
        };
        let month = self.clock.now().format("%Y%m").to_string();
        let stem = layout::tag_archive_stem(version);
        let one = [(key.clone(), stem, layout::JSON_EXT)];
        let canonical = version.canonical();
        let tag_suspect = |hash7| Suspect { app, month: &month, keys: &one, hash7, discriminator: &canonical };
        let doc: TagDoc = match docs::decode(key.as_str(), &bytes) {
            Ok(d) => d,
            Err(e) => {
                return self.reject(tag_suspect("unknown"), e.to_string(), ev).await;
            }
        };
        let image = match target_image(app, &doc.target_path) {
            Ok(i) => i,
            Err(reason) => {
                return self.reject(tag_suspect("unknown"), reason, ev).await;
            }
        };
        let meta = find_metadata(&*self.store, &image).await?;
        if meta.is_none() {
            let reason = format!("{} targets {image}, which is not in the bucket", key);
            return self.reject(tag_suspect(image.tag.hash7()), reason, ev).await;
        }
        // The version alone is not the tag's identity: a forced move away and back within a
        // minute writes two documents. The digest of this document's bytes is (and is the same
        // for every redelivery of the same write).
        let doc_id = hex::encode(&<md5::Md5 as sha2::Digest>::digest(&bytes)[..4]);
        let audit_key = layout::audit(
            app,
            doc.promoted_at,
            EventType::Tag.as_str(),
            image.tag.hash7(),
            &[&version.canonical(), &doc_id],
        );
        let mut rec =
            self.record(EventType::Tag, app, doc.promoted_at, &doc.promoted_by, (&doc.git_hash, &doc.git_time));
        rec.principal = ev.principal.clone();
        rec.details = serde_json::to_value(TagDetails {
            image_reference: image.to_string(),
            version: version.canonical(),
            tag_path: key.to_string(),
            forced: doc.previous.is_some(),
            previous_target: doc
                .previous
                .as_ref()
                .map(|p| p.source_image.clone().unwrap_or_else(|| p.target_path.clone())),
            archived_to: doc.archived_to.clone(),
        })
        .unwrap_or_default();
        if write_audit(&*self.store, &audit_key, &rec).await? {
            Ok(Outcome::Recorded { audit_key, notified: vec![] })
        } else {
            Ok(Outcome::Duplicate { audit_key })
        }
    }

    /// `pointers/**.json` created: audit `promotion` (or `rollback`) with the previous target,
    /// then send one message to every fresh agent registered for the app and environment.
    ///
    /// `written` is the document the caller just wrote (inline mode); otherwise the version the
    /// event names is read. Messages only go out when that version is still the current
    /// pointer, so a late event for an old promotion sends nothing stale.
    pub async fn fan_out_promotion(
        &self,
        app: &AppName,
        env: &EnvName,
        key: &ObjectKey,
        ev: &ObjectEvent,
        written: Option<&PointerDoc>,
    ) -> Result<Outcome, EventError> {
        let (doc, bytes): (PointerDoc, Bytes) = match written {
            Some(d) => (d.clone(), Bytes::from(docs::encode(d))),
            None => {
                let Some(bytes) = self.read_event_doc(key, ev).await? else {
                    return Ok(Outcome::Ignored { reason: format!("{key} no longer exists") });
                };
                match docs::decode(key.as_str(), &bytes) {
                    Ok(d) => (d, bytes),
                    Err(e) => {
                        return self.audit_bad_pointer(app, env, key, e.to_string(), ev, &bytes).await;
                    }
                }
            }
        };
        let image = match resolve_doc(&*self.store, app, &doc).await {
            Ok(i) => i,
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(e) => return self.audit_bad_pointer(app, env, key, e.to_string(), ev, &bytes).await,
        };
        // A pointer to an image that is not in the bucket would send agents after nothing.
        if find_metadata(&*self.store, &image).await?.is_none() {
            let reason = format!("{key} points to {image}, which is not in the bucket");
            return self.audit_bad_pointer(app, env, key, reason, ev, &bytes).await;
        }
        let event =
            if doc.action == Some(PointerAction::Rollback) { EventType::Rollback } else { EventType::Promotion };
        let seq = doc.seq();
        let audit_key = layout::audit(
            app,
            doc.promoted_at,
            event.as_str(),
            image.tag.hash7(),
            &[env.as_str(), &format!("seq{seq}")],
        );

        // Which agents to tell, decided before the claim so the record lists them.
        let current_seq = match read_small(&*self.store, key, docs::MAX_DOC_BYTES).await? {
            Some((b, _)) => docs::decode::<PointerDoc>(key.as_str(), &b).map(|d| d.seq()).ok(),
            None => None,
        };
        let is_current = current_seq == Some(seq);
        let targets = if is_current && self.notifier.is_some() { self.agent_queues(app, env).await? } else { vec![] };

        let mut rec = self.record(event, app, doc.promoted_at, &doc.promoted_by, (&doc.git_hash, &doc.git_time));
        rec.principal = ev.principal.clone();
        rec.details = serde_json::to_value(PromotionDetails {
            environment: env.to_string(),
            source: doc.describe_target(),
            source_type: doc.target_type.to_string(),
            pointer_path: key.to_string(),
            previous_target: doc.previous.as_ref().map(|p| match p.target_type {
                docs::TargetType::Tag => p.source_tag.clone().unwrap_or_else(|| p.target_path.clone()),
                docs::TargetType::Image => p.source_image.clone().unwrap_or_else(|| p.target_path.clone()),
            }),
            seq: Some(seq),
            image_reference: Some(image.to_string()),
            notified: targets.iter().map(|(id, _)| id.clone()).collect(),
        })
        .unwrap_or_default();
        if !write_audit(&*self.store, &audit_key, &rec).await? {
            return Ok(Outcome::Duplicate { audit_key });
        }
        let mut notified = Vec::new();
        if let Some(notifier) = &self.notifier {
            let msg = PromotionMessage {
                schema_version: SCHEMA_VERSION,
                kind: "promotion".into(),
                app: app.clone(),
                env: env.clone(),
                image: image.to_string(),
                pointer_seq: seq,
                time: doc.promoted_at,
            };
            // Serializing a struct of strings and numbers cannot fail.
            let body = serde_json::to_string(&msg).expect("promotion messages serialize");
            for (id, url) in &targets {
                // Bounded retries inside the claim: a retry of the whole event would find the
                // claim taken and send nothing, so transient SQS errors are retried here.
                let mut attempt = 0;
                loop {
                    match notifier.send(url, &body).await {
                        Ok(()) => {
                            notified.push(id.clone());
                            break;
                        }
                        Err(e) if e.retryable && attempt < 3 => {
                            attempt += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                        }
                        Err(e) => {
                            tracing::error!(agent = %id, queue = %url, error = %e, "could not notify an agent; it converges at its next reconcile");
                            break;
                        }
                    }
                }
            }
        }
        Ok(Outcome::Recorded { audit_key, notified })
    }

    async fn audit_bad_pointer(
        &self,
        app: &AppName,
        env: &EnvName,
        key: &ObjectKey,
        reason: String,
        ev: &ObjectEvent,
        bytes: &[u8],
    ) -> Result<Outcome, EventError> {
        // A pointer is live state: it is not moved away, only reported. Nothing is sent.
        let now = ev.event_time.unwrap_or_else(|| self.clock.now());
        let mut rec = self.record(EventType::Reject, app, now, &self.actor, ("", ""));
        rec.principal = ev.principal.clone();
        rec.details = serde_json::to_value(ArchiveDetails {
            path: key.to_string(),
            reason: reason.clone(),
            archived_to: vec![],
            image_reference: None,
        })
        .unwrap_or_default();
        // The document's digest names this write: redeliveries share it, other writes do not.
        let doc_id = hex::encode(&<md5::Md5 as sha2::Digest>::digest(bytes)[..4]);
        let audit_key = layout::audit(app, now, EventType::Reject.as_str(), "unknown", &[env.as_str(), &doc_id]);
        write_audit(&*self.store, &audit_key, &rec).await?;
        tracing::error!(pointer = %key, reason = %reason, "bad pointer: audited, no agent notified");
        Ok(Outcome::Rejected { reason, archived_to: vec![], audit_key: Some(audit_key) })
    }

    /// Fresh registrations with an acceptable queue: `(agent id, queue url)`.
    async fn agent_queues(&self, app: &AppName, env: &EnvName) -> Result<Vec<(String, String)>, StoreError> {
        let now = self.clock.now();
        let objects = list_all(&*self.store, &layout::agents_prefix(app, Some(env))).await?;
        let regs = futures::stream::iter(objects)
            .map(|o| async move { (read_small(&*self.store, &o.key, docs::MAX_DOC_BYTES).await, o.key) })
            .buffer_unordered(8)
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

/// The image an archive key names, refusing keys of another app.
pub fn target_image(app: &AppName, target_path: &str) -> Result<ImageRef, String> {
    let key = ObjectKey::parse(target_path).map_err(|e| e.to_string())?;
    match layout::classify(&key) {
        Ok(BucketKey::ImageArchive { app: a, tag, .. }) | Ok(BucketKey::ImageMetadata { app: a, tag, .. }) => {
            if &a != app {
                return Err(format!("{target_path} belongs to app {a}, not {app}"));
            }
            Ok(ImageRef::new(a, tag))
        }
        Ok(other) => Err(format!("{target_path} is not an image ({other:?})")),
        Err(e) => Err(e.to_string()),
    }
}

/// Finds an image's metadata: at the key its tag implies, else (buckets of the original tool,
/// which used the push month) anywhere under `images/{app}/`. `None` if absent.
pub async fn find_metadata(store: &dyn ObjectStore, image: &ImageRef) -> Result<Option<ObjectKey>, StoreError> {
    let canonical = layout::image_metadata(&image.app, &image.tag);
    if store.head(&canonical).await?.is_some() {
        return Ok(Some(canonical));
    }
    let want = format!("{}{}", layout::image_stem(&image.app, &image.tag), layout::JSON_EXT);
    for month in crate::store::list_prefixes(store, &layout::images_prefix(&image.app)).await? {
        let key = ObjectKey::parse(&format!("{month}{want}"))
            .map_err(|e| StoreError::Other { message: e.to_string(), retryable: false })?;
        if store.head(&key).await?.is_some() {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

/// The longest pointer -> tag -> ... -> image chain followed before giving up.
pub const MAX_DEPTH: usize = 8;

/// Resolves a pointer document to the image it names, through tags, with a depth limit and
/// cycle detection, refusing targets in another app. Does not check the image exists.
pub async fn resolve_doc(store: &dyn ObjectStore, app: &AppName, doc: &PointerDoc) -> Result<ImageRef, Error> {
    let mut seen: Vec<String> = Vec::new();
    let mut target_type = doc.target_type;
    let mut path = doc.target_path.clone();
    for _ in 0..MAX_DEPTH {
        if seen.contains(&path) {
            seen.push(path);
            return Err(Error::integrity(format!("pointer cycle: {}; fix one of these files", seen.join(" -> "))));
        }
        seen.push(path.clone());
        match target_type {
            docs::TargetType::Image => return target_image(app, &path).map_err(Error::integrity),
            docs::TargetType::Tag => {
                let key = ObjectKey::parse(&path).map_err(|e| Error::integrity(e.to_string()))?;
                match layout::classify(&key) {
                    Ok(BucketKey::Tag { app: a, .. }) if &a == app => {}
                    Ok(BucketKey::Tag { app: a, .. }) => {
                        return Err(Error::integrity(format!("{path} belongs to app {a}, not {app}; fix the pointer")));
                    }
                    _ => return Err(Error::integrity(format!("{path} is not a tag file; fix the pointer"))),
                }
                let Some((bytes, _)) = read_small(store, &key, docs::MAX_DOC_BYTES).await? else {
                    return Err(Error::not_found(
                        format!("{path} does not exist"),
                        format!(
                            "the pointer names a tag that was removed; promote again (s3dock promote {app} VERSION ENV)"
                        ),
                    ));
                };
                let tag: TagDoc = docs::decode(key.as_str(), &bytes)?;
                target_type = tag.target_type;
                path = tag.target_path;
            }
        }
    }
    Err(Error::integrity(format!("pointer chain longer than {MAX_DEPTH}: {}", seen.join(" -> "))))
}

/// The image tag (`YYYYMMDD-HHMM-hash7`) of an archive or metadata key, if it is one.
pub fn tag_of_key(key: &ObjectKey) -> Option<ImageTag> {
    match layout::classify(key) {
        Ok(BucketKey::ImageArchive { tag, .. }) | Ok(BucketKey::ImageMetadata { tag, .. }) => Some(tag),
        _ => None,
    }
}
