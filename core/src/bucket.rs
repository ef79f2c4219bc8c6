//! Reading and writing the bucket's documents safely: the helpers every writer and every event
//! handler shares.
//!
//! - Lookups: an image's metadata and archive ([`find_metadata`], [`archive_key`]), what a
//!   pointer resolves to ([`resolve_doc`]), what references an image ([`references`]).
//! - Writes that survive a lost response. S3 applies a conditional write, the response is
//!   lost, the SDK retries, and the retry fails its own condition (412). [`put_doc`] and
//!   [`write_audit`] then read the key back and recognize their own write by its write id, so
//!   the caller learns what really happened.
//! - Archive copies ([`archive_copy`], [`archive_version`]): conditional creates under
//!   `archive/`, never overwritten.
//! - Leases ([`lease`]): the handshake between a command about to reference an image and
//!   one about to delete it, so a deletion can never race a promotion into a missing image.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::clock::{Backoff, Clock, new_write_id};
use crate::docs::{self, AuditRecord, ImageMetadata, PointerDoc, TagDoc};
use crate::error::Error;
use crate::layout::{self, BucketKey};
use crate::names::{AppName, ImageRef, ImageTag, ObjectKey};
use crate::store::{ETag, ObjectInfo, ObjectStore, Precondition, StoreError, list_all, read_small};

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

/// The image tag (`YYYYMMDD-HHMM-hash7`) of an archive or metadata key, if it is one.
pub fn tag_of_key(key: &ObjectKey) -> Option<ImageTag> {
    match layout::classify(key) {
        Ok(BucketKey::ImageArchive { tag, .. }) | Ok(BucketKey::ImageMetadata { tag, .. }) => Some(tag),
        _ => None,
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

/// The archive a metadata document commits: the one it names, else the one beside it.
pub fn archive_key(meta_key: &ObjectKey, meta: &ImageMetadata) -> Option<ObjectKey> {
    match &meta.archive_path {
        // `ImageMetadata::validate` checked it is an archive key of this image.
        Some(p) => ObjectKey::parse(p).ok(),
        None => layout::archive_beside_metadata(meta_key),
    }
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

/// How a conditional document write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Our write is the current version (`etag`), whether its response arrived or was lost.
    Ours(ETag),
    /// Our write landed, its response was lost, and someone wrote on top of it before we could
    /// look: the document there lists our write id among those it replaced.
    Superseded,
    /// The condition failed on someone else's write: ours never landed.
    Conflict,
}

/// Writes a document under `precondition`. When the store answers PreconditionFailed (or
/// NotFound for `IfMatch`), reads the key back: if the document there carries `write_id`, the
/// write landed and only its response was lost; if it lists `write_id` in `recent_writes`, the
/// write landed and was replaced since. Any other error is returned as is.
pub async fn put_doc(
    store: &dyn ObjectStore,
    clock: &dyn Clock,
    key: &ObjectKey,
    body: Bytes,
    precondition: Precondition,
    write_id: &str,
) -> Result<Written, StoreError> {
    match store.put_bytes(key, body, precondition).await {
        Ok(info) => Ok(Written::Ours(info.etag)),
        Err(e) if e.is_precondition_failed() || e.is_not_found() => {
            // Whether the write landed decides what the command reports, so reading it back is
            // worth a few tries through a transient error.
            let mut attempt = 0;
            let found = loop {
                match read_write_id(store, key).await {
                    Ok(found) => break found,
                    Err(e) if e.is_retryable() && attempt < READ_BACK_TRIES => {
                        attempt += 1;
                        Backoff::TRANSIENT.wait(clock, attempt).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            match found {
                Some(w) if w.write_id.as_deref() == Some(write_id) => Ok(Written::Ours(w.etag)),
                Some(w) if w.recent.iter().any(|r| r == write_id) => Ok(Written::Superseded),
                _ => Ok(Written::Conflict),
            }
        }
        Err(e) => Err(e),
    }
}

/// Reads back after a failed condition tried this many times more on a transient error.
const READ_BACK_TRIES: u32 = 4;

/// Whose the document at a key is: its write id, the ones it replaced, its ETag.
#[derive(Debug, Clone)]
pub struct WriteIds {
    pub write_id: Option<String>,
    pub recent: Vec<String>,
    pub etag: ETag,
}

/// The write ids of the document at `key`, if there is one.
pub async fn read_write_id(store: &dyn ObjectStore, key: &ObjectKey) -> Result<Option<WriteIds>, StoreError> {
    let Some((bytes, info)) = read_small(store, key, docs::MAX_DOC_BYTES).await? else { return Ok(None) };
    let v = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default();
    let write_id = v.get("write_id").and_then(|w| w.as_str()).map(str::to_owned);
    let recent = v
        .get("recent_writes")
        .and_then(|r| r.as_array())
        .map(|a| a.iter().filter_map(|w| w.as_str().map(str::to_owned)).take(docs::MAX_RECENT_WRITES).collect())
        .unwrap_or_default();
    Ok(Some(WriteIds { write_id, recent, etag: info.etag }))
}

/// Writes an audit record exactly once. `Ok(true)` if this call created it, including when
/// the response was lost and the record found is this call's own (its `write_id`); `Ok(false)`
/// if someone wrote it before. A record needs a `write_id` for lost-response recognition.
pub async fn write_audit(
    store: &dyn ObjectStore,
    clock: &dyn Clock,
    key: &ObjectKey,
    record: &AuditRecord,
) -> Result<bool, StoreError> {
    let body = Bytes::from(docs::encode(record));
    match &record.write_id {
        // Audit records are never replaced, so `Superseded` cannot happen here.
        Some(id) => Ok(matches!(put_doc(store, clock, key, body, Precondition::IfAbsent, id).await?, Written::Ours(_))),
        None => match store.put_bytes(key, body, Precondition::IfAbsent).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_precondition_failed() => Ok(false),
            Err(e) => Err(e),
        },
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

/// Archives one version of `src` under a name derived from that version (its write time and
/// ETag), so handling the same event twice makes one copy, not two. Returns the archive key;
/// `NotFound` if `src` no longer has that ETag (someone replaced or deleted it: not ours to
/// archive any more).
pub async fn archive_version(
    store: &dyn ObjectStore,
    src: &ObjectKey,
    info: &ObjectInfo,
    app: &AppName,
    stem: &str,
    label: &str,
    ext: &str,
) -> Result<ObjectKey, StoreError> {
    let when = info.last_modified.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let etag8: String = info.etag.normalized().chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    let month = when.format("%Y%m").to_string();
    let dst = layout::archive(app, &month, stem, when, &format!("{label}-{etag8}"), ext);
    match store.head(src).await? {
        Some(now) if now.etag == info.etag => {}
        _ => return Err(StoreError::NotFound { key: src.to_string() }),
    }
    match store.copy(src, &dst, Precondition::IfAbsent).await {
        Ok(_) => Ok(dst),
        // Made by an earlier delivery of the same event: the name is the version's.
        Err(e) if e.is_precondition_failed() => Ok(dst),
        Err(e) => Err(e),
    }
}

/// What references an image: tag files, pointers (current target, or rollback target), agents
/// running it. Unreadable documents are reported as references to be safe: it is unknown
/// what they protect.
pub async fn references(store: &dyn ObjectStore, image: &ImageRef) -> Result<Vec<String>, Error> {
    let app = &image.app;
    let mut out = Vec::new();
    for o in list_all(store, &layout::tags_prefix(app)).await? {
        let Ok(BucketKey::Tag { version, .. }) = layout::classify(&o.key) else { continue };
        let Some((bytes, _)) = read_small(store, &o.key, docs::MAX_DOC_BYTES).await? else { continue };
        match docs::decode::<TagDoc>(o.key.as_str(), &bytes) {
            Ok(t) if target_image(app, &t.target_path).as_ref() == Ok(image) => {
                out.push(format!("tag {}", version.canonical()));
            }
            Ok(_) => {}
            Err(e) => out.push(format!("unreadable tag {} ({e})", o.key)),
        }
    }
    for o in list_all(store, &layout::pointers_prefix(app)).await? {
        let Ok(BucketKey::Pointer { env, .. }) = layout::classify(&o.key) else { continue };
        let Some((bytes, _)) = read_small(store, &o.key, docs::MAX_DOC_BYTES).await? else { continue };
        let doc = match docs::decode::<PointerDoc>(o.key.as_str(), &bytes) {
            Ok(d) => d,
            Err(e) => {
                out.push(format!("unreadable pointer {} ({e})", o.key));
                continue;
            }
        };
        // A pointer that follows a tag references the image through it (listed above); one
        // that names the image directly does so itself.
        if target_image(app, &doc.target_path).as_ref() == Ok(image) {
            out.push(format!("environment {env}"));
        }
        if let Some(prev) = &doc.previous
            && target_image(app, &prev.target_path).as_ref() == Ok(image)
        {
            out.push(format!("rollback target of {env}"));
        }
    }
    for o in list_all(store, &layout::agents_prefix(app, None)).await? {
        if !matches!(layout::classify(&o.key), Ok(BucketKey::Agent { .. })) {
            continue;
        }
        let Some((bytes, _)) = read_small(store, &o.key, docs::MAX_DOC_BYTES).await? else { continue };
        if let Ok(reg) = docs::decode::<docs::AgentRegistration>(o.key.as_str(), &bytes)
            && reg.state.and_then(|s| s.image).and_then(|i| ImageRef::parse(&i).ok()).as_ref() == Some(image)
        {
            out.push(format!("agent {}", reg.agent_id));
        }
    }
    Ok(out)
}

/// Pointers whose target is the tag file at `tag_key`.
pub async fn pointers_following(
    store: &dyn ObjectStore,
    app: &AppName,
    tag_key: &ObjectKey,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for o in list_all(store, &layout::pointers_prefix(app)).await? {
        let Ok(BucketKey::Pointer { env, .. }) = layout::classify(&o.key) else { continue };
        let Some((b, _)) = read_small(store, &o.key, docs::MAX_DOC_BYTES).await? else { continue };
        match docs::decode::<PointerDoc>(o.key.as_str(), &b) {
            Ok(p) if p.target_path == tag_key.as_str() => out.push(format!("environment {env}")),
            Ok(_) => {}
            Err(_) => out.push(format!("unreadable pointer {}", o.key)),
        }
    }
    Ok(out)
}

/// The lease handshake between referencing an image and deleting it.
///
/// A command about to make a reference (tag, promote, rollback) first writes a *hold*
/// (`leases/{app}/{tag}/hold-{id}`), then checks there is no *delete lease*, then writes its
/// tag or pointer, then removes the hold. A deleter (cleanup, a rejected upload) first
/// writes the delete lease, then lists the holds, then reads the references, and deletes only
/// if it saw neither. Each side writes before it reads what the other writes, and S3 is
/// strongly consistent, so at least one of them sees the other: a reference made while a
/// deletion is deciding is either seen by the deleter (it spares the image) or sees the
/// deleter (it refuses and says to try again).
///
/// Leases expire, so a crashed command blocks nothing for long: a lease older than
/// [`lease::TTL`] (by the store's clock, `LastModified`) is ignored, and each side bounds its
/// own work between writing its lease and acting by [`lease::MAX_WORK`], far below the TTL.
pub mod lease {
    use super::*;
    use crate::docs::LeaseDoc;

    /// A lease older than this is stale: its writer crashed or gave up.
    pub const TTL: chrono::Duration = chrono::Duration::minutes(15);
    /// The longest a holder may take between writing its lease and acting on it.
    pub const MAX_WORK: chrono::Duration = chrono::Duration::minutes(5);

    fn doc(kind: &str, by: &str, clock: &dyn Clock) -> (LeaseDoc, Bytes) {
        let d = LeaseDoc {
            schema_version: docs::SCHEMA_VERSION,
            kind: kind.into(),
            by: by.into(),
            at: clock.now(),
            write_id: new_write_id(clock),
        };
        let body = Bytes::from(docs::encode(&d));
        (d, body)
    }

    fn fresh(info: &ObjectInfo, now: DateTime<Utc>) -> bool {
        info.last_modified.is_none_or(|t| now - t < TTL)
    }

    /// A hold on an image, released (best effort) by [`Hold::release`].
    #[derive(Debug)]
    pub struct Hold {
        key: ObjectKey,
        taken: DateTime<Utc>,
    }

    impl Hold {
        /// Refuses to act on a hold kept longer than [`MAX_WORK`]: a deleter may take it for
        /// stale soon after.
        pub fn check_time(&self, clock: &dyn Clock) -> Result<(), Error> {
            if clock.now() - self.taken > MAX_WORK {
                return Err(Error::Conflict {
                    message: format!("{} was held for longer than {MAX_WORK}; run the command again", self.key),
                });
            }
            Ok(())
        }

        pub async fn release(self, store: &dyn ObjectStore) {
            if let Err(e) = store.delete(&self.key).await {
                tracing::debug!(key = %self.key, error = %e, "could not release a hold; it expires");
            }
        }
    }

    /// Takes a hold on `image` before referencing it: refuses while a deletion of it is
    /// under way.
    pub async fn hold(store: &dyn ObjectStore, clock: &dyn Clock, image: &ImageRef, by: &str) -> Result<Hold, Error> {
        let (d, body) = doc("hold", by, clock);
        let key = layout::hold(&image.app, &image.tag, &d.write_id);
        // The key is unique to this hold: a lost response's retry finds its own object.
        match store.put_bytes(&key, body, Precondition::IfAbsent).await {
            Ok(_) => {}
            Err(e) if e.is_precondition_failed() => {}
            Err(e) => return Err(e.into()),
        }
        let hold = Hold { key, taken: d.at };
        let tomb = layout::tombstone(&image.app, &image.tag);
        match store.head(&tomb).await {
            Ok(Some(info)) if fresh(&info, clock.now()) => {
                hold.release(store).await;
                Err(Error::Conflict {
                    message: format!(
                        "{image} is being deleted (cleanup, or a rejected upload) right now; check `s3dock list images {}` and push it again if it is gone",
                        image.app
                    ),
                })
            }
            Ok(_) => Ok(hold),
            Err(e) => {
                hold.release(store).await;
                Err(e.into())
            }
        }
    }

    /// A deleter's claim on an image, released by [`Tomb::release`] whatever happens.
    #[derive(Debug)]
    pub struct Tomb {
        key: ObjectKey,
        taken: DateTime<Utc>,
    }

    /// Why a deleter must not delete.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Spared {
        /// A command is making a reference to it right now.
        Held,
        /// Another deleter is at work on it.
        Busy,
    }

    impl Tomb {
        pub fn check_time(&self, clock: &dyn Clock) -> bool {
            clock.now() - self.taken <= MAX_WORK
        }

        pub async fn release(self, store: &dyn ObjectStore) {
            if let Err(e) = store.delete(&self.key).await {
                tracing::debug!(key = %self.key, error = %e, "could not release a delete lease; it expires");
            }
        }
    }

    /// Claims `image` for deletion and looks for holds. `Ok(Err(Spared))` when it must not be
    /// deleted now; the caller then reads the references, deletes, and releases the claim.
    pub async fn claim(
        store: &dyn ObjectStore,
        clock: &dyn Clock,
        image: &ImageRef,
        by: &str,
    ) -> Result<Result<Tomb, Spared>, StoreError> {
        let (d, body) = doc("delete", by, clock);
        let key = layout::tombstone(&image.app, &image.tag);
        match put_doc(store, clock, &key, body.clone(), Precondition::IfAbsent, &d.write_id).await? {
            Written::Ours(_) => {}
            Written::Conflict | Written::Superseded => {
                // Someone's claim, or a stale one a crashed deleter left: take over only the latter.
                let Some(info) = store.head(&key).await? else { return Ok(Err(Spared::Busy)) };
                if fresh(&info, clock.now()) {
                    return Ok(Err(Spared::Busy));
                }
                match put_doc(store, clock, &key, body, Precondition::IfMatch(info.etag), &d.write_id).await? {
                    Written::Ours(_) => {}
                    Written::Conflict | Written::Superseded => return Ok(Err(Spared::Busy)),
                }
            }
        }
        let tomb = Tomb { key, taken: d.at };
        let now = clock.now();
        let prefix = layout::leases_prefix(&image.app, &image.tag);
        let held = list_all(store, &prefix)
            .await
            .map(|objects| objects.iter().any(|o| o.key.file_name().starts_with("hold-") && fresh(o, now)));
        match held {
            Ok(false) => Ok(Ok(tomb)),
            Ok(true) => {
                tomb.release(store).await;
                Ok(Err(Spared::Held))
            }
            Err(e) => {
                tomb.release(store).await;
                Err(e)
            }
        }
    }
}
