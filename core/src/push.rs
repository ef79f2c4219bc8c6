//! The bucket side of a push: decide whether to upload, stream the archive in, archive what it
//! replaces, and commit with the metadata.
//!
//! Order and conditions, which together mean no upload is ever lost and readers never see
//! metadata beside an archive it does not describe:
//! 1. Plan: metadata for this tag with the same Docker image id (and its archive intact) means
//!    the image is already there: skip without exporting anything (`docker save` is not
//!    byte-stable, so comparing MD5s alone would almost never skip). Different content under a
//!    tag that a tag file, pointer or agent references is refused unless forced: it would
//!    change what they run.
//! 2. Stream the gzipped archive to a key nobody else writes: the tag's own archive key on a
//!    first push (created with `If-None-Match: *`), a revision key unique to this push when
//!    anything is already there. Hash it on the way (MD5, SHA-256, size). Just before it becomes
//!    visible, an upload identical to what the bucket holds is dropped (same MD5).
//! 3. Copy what will be replaced (metadata and archive) to `archive/`, conditional creates.
//! 4. Commit: write the metadata, which names the archive (key and ETag), conditionally on the
//!    metadata read at planning (`If-Match`, or `If-None-Match: *` when there was none). This
//!    single write moves readers from the old archive to the new one. A concurrent push that
//!    committed first makes it fail: this upload is deleted and the push reports it.
//! 5. Only then delete the replaced archive (already archived). Every write carries this
//!    push's write id, so a write whose response was lost is recognized as this push's own.
//!
//! An interrupted push leaves no metadata and no visible archive (the multipart upload is
//! aborted), or, killed after step 2, an archive no metadata names, which cleanup removes
//! after its grace period; killed after step 4, a replaced archive that was already archived.

use bytes::Bytes;

use crate::bucket::{self, Written};
use crate::clock::new_write_id;
use crate::digest::{Digests, HashingReader};
use crate::docs::{self, DocError, ImageMetadata, ReplacedImage, SCHEMA_VERSION};
use crate::error::{Error, Result};
use crate::events::{EventError, ObjectEvent, Outcome, Verification};
use crate::layout;
use crate::names::{ImageRef, ObjectKey};
use crate::registry::{ImageRecord, Registry};
use crate::store::{Abort, BoxReader, ObjectInfo, Precondition, PutOptions, StoreError, read_small};
use crate::transfer::Progress;

/// What the image itself says about where it came from (its labels and `docker inspect`).
#[derive(Debug, Clone, Default)]
pub struct PushFacts {
    /// Docker's content id (`sha256:...`).
    pub image_id: String,
    /// The full commit id.
    pub git_hash: String,
    /// `YYYYMMDD-HHMM`.
    pub git_time: String,
    pub platform: Option<String>,
    pub source: Option<String>,
    /// `docker-archive` or `oci-archive`.
    pub format: Option<String>,
    /// Counts the uncompressed tar bytes as they stream; recorded as `tar_size` at commit.
    pub tar_bytes: Option<Progress>,
}

/// What is in the bucket under the tag being pushed.
#[derive(Debug, Clone, Default)]
pub struct Existing {
    /// The metadata, if present and readable.
    pub metadata: Option<ImageMetadata>,
    /// The metadata object (present even when the document is unreadable).
    pub metadata_info: Option<ObjectInfo>,
    /// The archive the metadata names, or an unfinished push's archive at the tag's key.
    pub archive: Option<ObjectInfo>,
}

/// What a push will do, decided before anything is exported.
#[derive(Debug, Clone)]
pub struct Upload {
    pub existing: Existing,
    /// Where the new archive goes: the tag's own key if nothing is there, else a revision key.
    pub target: ObjectKey,
    /// This push's write id, in every object it writes.
    pub write_id: String,
    /// The content replaced is referenced and the push was forced: what referenced it.
    pub forced_over: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum PushPlan {
    /// The bucket holds this image already.
    Skip { record: ImageRecord, reason: String },
    /// Upload.
    Upload(Upload),
}

#[derive(Debug)]
pub struct PushOutcome {
    pub image: ImageRef,
    pub archive_key: ObjectKey,
    pub metadata_key: ObjectKey,
    /// `None` when skipped before uploading.
    pub digests: Option<Digests>,
    /// Why nothing was uploaded or replaced, if so.
    pub skipped: Option<String>,
    /// Where replaced content went.
    pub archived: Vec<ObjectKey>,
    /// What referenced the replaced content, when `--force` replaced it.
    pub forced_over: Vec<String>,
    pub event: Option<std::result::Result<Outcome, EventError>>,
    /// A layered push: each range of the new archive, uploaded or reused (and from where).
    pub layers: Vec<crate::layers::RangePlan>,
}

impl PushOutcome {
    /// The outcome of a push the plan skipped: the bucket already holds `record`.
    pub fn skipped(record: ImageRecord, reason: String) -> Self {
        PushOutcome {
            image: record.image,
            archive_key: record.archive_key,
            metadata_key: record.metadata_key,
            digests: None,
            skipped: Some(reason),
            archived: vec![],
            forced_over: vec![],
            event: None,
            layers: vec![],
        }
    }
}

impl Registry {
    /// Decides whether `image` (with Docker id `image_id`) needs uploading, and where. A
    /// replacement of referenced content is refused unless `force`.
    pub async fn plan_push(&self, image: &ImageRef, image_id: &str, force: bool) -> Result<PushPlan> {
        if !docs::is_image_id(image_id) {
            return Err(Error::Usage {
                message: format!(
                    "{image_id:?} is not a Docker image id (sha256: and 64 hex digits); check `docker image inspect`"
                ),
            });
        }
        self.ensure_preconditions().await?;
        let meta_key = layout::image_metadata(&image.app, &image.tag);
        let mut existing = Existing::default();
        if let Some((bytes, info)) = read_small(&**self.store(), &meta_key, docs::MAX_DOC_BYTES).await? {
            existing.metadata_info = Some(info);
            match docs::decode::<ImageMetadata>(meta_key.as_str(), &bytes) {
                Ok(m) => existing.metadata = Some(m),
                // Never overwrite what a newer s3dock wrote: it may mean more than this build knows.
                Err(e @ DocError::UnsupportedVersion { .. }) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(key = %meta_key, error = %e, "existing metadata is unreadable; it will be archived and replaced")
                }
            }
        }
        let archive_key = match &existing.metadata {
            Some(m) => bucket::archive_key(&meta_key, m),
            None => layout::archive_beside_metadata(&meta_key),
        };
        if let Some(k) = &archive_key {
            existing.archive = self.store().head(k).await?;
        }
        if let (Some(m), Some(a)) = (&existing.metadata, &existing.archive)
            && m.image_id.as_deref() == Some(image_id)
            && m.size == a.size
            && m.archive_etag.as_ref().is_none_or(|e| a.etag == crate::store::ETag(e.clone()))
            && m.app_name == image.app.as_str()
            && m.image_tag == image.to_string()
        {
            let record = ImageRecord {
                image: image.clone(),
                metadata_key: meta_key,
                archive_key: a.key.clone(),
                metadata: m.clone(),
                archive_size: a.size,
            };
            return Ok(PushPlan::Skip {
                record,
                reason: format!("the bucket already has {image} with image id {image_id}"),
            });
        }
        // Different content under a tag something runs or follows changes what it runs.
        let mut forced_over = Vec::new();
        if let Some(m) = &existing.metadata
            && m.image_id.as_deref() != Some(image_id)
        {
            let refs = bucket::references(&**self.store(), image).await?;
            if !refs.is_empty() {
                if !force {
                    return Err(Error::Refused {
                        message: format!(
                            "{image} in the bucket is image {}, referenced by {}; pushing image {image_id} under the same tag would change what they run. Build a new commit (a new tag), or pass --force to replace it (audited; agents redeploy)",
                            m.image_id.as_deref().unwrap_or("(unknown id)"),
                            refs.join(", ")
                        ),
                    });
                }
                forced_over = refs;
            }
        }
        let write_id = new_write_id(&**self.clock());
        let target = if existing.metadata_info.is_none() && existing.archive.is_none() {
            layout::image_archive(&image.app, &image.tag)
        } else {
            layout::image_archive_revision(&image.app, &image.tag, &write_id[..12])
        };
        Ok(PushPlan::Upload(Upload { existing, target, write_id, forced_over }))
    }

    /// Streams the gzipped archive `body` to the bucket and commits it (see the module doc).
    pub async fn push_archive(
        &self,
        image: &ImageRef,
        facts: &PushFacts,
        body: BoxReader,
        plan: Upload,
    ) -> Result<PushOutcome> {
        let store = self.store().clone();
        let metadata_key = layout::image_metadata(&image.app, &image.tag);
        let Upload { existing, target, write_id, forced_over } = plan;
        let hashing = HashingReader::new(body);
        let handle = hashing.handle();
        let check = {
            let handle = handle.clone();
            let old = existing.metadata.clone();
            move || -> futures::future::BoxFuture<'static, std::result::Result<(), Abort>> {
                Box::pin(async move {
                    let d = handle.digests().ok_or_else(|| Abort::Refused("the image stream ended early".into()))?;
                    match old {
                        Some(m) if m.checksum == d.md5 && m.size == d.size => Err(Abort::Identical),
                        _ => Ok(()),
                    }
                })
            }
        };
        let opts = PutOptions {
            precondition: Precondition::IfAbsent,
            commit_check: Some(Box::new(check)),
            write_id: Some(write_id.clone()),
            ..Default::default()
        };
        let archive_info = match store.put_stream(&target, Box::pin(hashing), opts).await {
            Ok(info) => info,
            Err(StoreError::Aborted { reason: Abort::Identical, .. }) => {
                return Ok(PushOutcome {
                    image: image.clone(),
                    archive_key: existing.archive.as_ref().map(|a| a.key.clone()).unwrap_or(target),
                    metadata_key,
                    digests: handle.digests(),
                    skipped: Some(format!("the bucket already has {image} with the same MD5")),
                    archived: vec![],
                    forced_over: vec![],
                    event: None,
                    layers: vec![],
                });
            }
            Err(e) => landed(&*store, image, &target, &write_id, e).await?,
        };
        let digests = handle.digests().ok_or_else(|| Error::integrity("the image stream ended early"))?;
        let tar_size = facts.tar_bytes.as_ref().map(Progress::bytes).filter(|n| *n > 0);
        let upload = Upload { existing, target, write_id, forced_over };
        self.commit_upload(image, facts, upload, archive_info, digests, None, tar_size).await
    }

    /// Commits an uploaded archive (steps 3 to 5 of the module doc): archives what it
    /// replaces, writes the metadata conditionally, removes the replaced archive.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn commit_upload(
        &self,
        image: &ImageRef,
        facts: &PushFacts,
        plan: Upload,
        archive_info: ObjectInfo,
        digests: Digests,
        layers: Option<(crate::layers::LayerIndex, Vec<crate::layers::RangePlan>)>,
        tar_size: Option<u64>,
    ) -> Result<PushOutcome> {
        let store = self.store().clone();
        let metadata_key = layout::image_metadata(&image.app, &image.tag);
        let Upload { existing, target, write_id, forced_over } = plan;
        let (index, plan_report) = match layers {
            Some((i, p)) => (Some(i), p),
            None => (None, vec![]),
        };
        // From here on the upload exists: any failure before the commit removes it again.
        let discard = |why: Error| {
            let store = store.clone();
            let (target, etag) = (target.clone(), archive_info.etag.clone());
            async move {
                if let Err(e) = store.delete_if(&target, &etag).await {
                    tracing::warn!(key = %target, error = %e, "could not remove an upload that was not committed; cleanup removes it");
                }
                why
            }
        };

        // Keep a copy of what is about to be replaced.
        let mut archived: Vec<ObjectKey> = Vec::new();
        let now = self.clock().now();
        let stem = layout::image_stem(&image.app, &image.tag);
        let month = image.tag.month();
        let old_archive = existing.archive.as_ref().filter(|a| a.key != target);
        for (key, ext) in [
            (existing.metadata_info.as_ref().map(|i| &i.key), layout::JSON_EXT),
            (old_archive.map(|a| &a.key), layout::ARCHIVE_EXT),
        ] {
            let Some(key) = key else { continue };
            match bucket::archive_copy(&*store, key, |n| layout::archive(&image.app, &month, &stem, now, n, ext)).await
            {
                Ok(dst) => archived.push(dst),
                // Gone since planning (a concurrent push or cleanup): nothing to keep.
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    let why = Error::Conflict {
                        message: format!(
                            "could not archive {key} before replacing it ({e}); nothing was replaced — run the push again"
                        ),
                    };
                    return Err(discard(why).await);
                }
            }
        }

        let meta = ImageMetadata {
            schema_version: Some(SCHEMA_VERSION),
            checksum: digests.md5.clone(),
            size: digests.size,
            created_at: now,
            git_hash: facts.git_hash.clone(),
            git_time: facts.git_time.clone(),
            image_tag: image.to_string(),
            app_name: image.app.to_string(),
            sha256: (!digests.sha256.is_empty()).then(|| digests.sha256.clone()),
            image_id: Some(facts.image_id.clone()),
            platform: facts.platform.clone(),
            pushed_by: Some(self.actor().to_owned()),
            source: facts.source.clone(),
            format: facts.format.clone(),
            archived_previous: archived.iter().find(|k| k.as_str().ends_with(layout::JSON_EXT)).map(|k| k.to_string()),
            archive_path: (target != layout::image_archive(&image.app, &image.tag)).then(|| target.to_string()),
            archive_etag: Some(archive_info.etag.0.clone()),
            tar_size,
            write_id: Some(write_id.clone()),
            recent_writes: existing
                .metadata
                .as_ref()
                .map(|m| docs::recent_writes(m.write_id.as_deref(), &m.recent_writes))
                .unwrap_or_default(),
            replaced: existing.metadata_info.as_ref().map(|_| ReplacedImage {
                image_id: existing.metadata.as_ref().and_then(|m| m.image_id.clone()),
                checksum: existing.metadata.as_ref().map(|m| m.checksum.clone()).unwrap_or_default(),
                forced: !forced_over.is_empty(),
            }),
            layers: index,
        };
        let body = Bytes::from(docs::encode(&meta));
        let precondition = match &existing.metadata_info {
            Some(info) => Precondition::IfMatch(info.etag.clone()),
            None => Precondition::IfAbsent,
        };
        let etag = match bucket::put_doc(&*store, &**self.clock(), &metadata_key, body.clone(), precondition, &write_id)
            .await
        {
            Ok(Written::Ours(etag)) => etag,
            // Committed, and a later push already replaced it (archiving this one).
            Ok(Written::Superseded) => crate::store::ETag(String::new()),
            Ok(Written::Conflict) => {
                let why = Error::Conflict {
                    message: format!(
                        "another push of {image} committed while this one was uploading; this upload was discarded and nothing of theirs was replaced — run `s3dock push {image}` again if this image should win"
                    ),
                };
                return Err(discard(why).await);
            }
            Err(e) => return Err(discard(e.into()).await),
        };

        // Committed. The replaced archive was archived above; readers now go by the new metadata.
        if let Some(old) = old_archive
            && let Err(e) = store.delete_if(&old.key, &old.etag).await
            && !e.is_not_found()
        {
            tracing::warn!(key = %old.key, error = %e, "could not remove the replaced archive (it was archived); cleanup removes it");
        }
        let event = match self.handlers() {
            Some(h) => Some(
                h.verify_upload(
                    &image.app,
                    &metadata_key,
                    &ObjectEvent::written(metadata_key.clone(), &etag, body),
                    Verification::Streamed(digests.clone()),
                )
                .await,
            ),
            None => None,
        };
        Ok(PushOutcome {
            image: image.clone(),
            archive_key: target,
            metadata_key,
            digests: Some(digests),
            skipped: None,
            archived,
            forced_over,
            event,
            layers: plan_report,
        })
    }
}

/// How an upload that failed its create condition really ended: it landed and only the answer
/// was lost (the SDK's retry then failed the condition on our own object: its write id says
/// so), or another push of the same tag is writing there.
pub(crate) async fn landed(
    store: &dyn crate::store::ObjectStore,
    image: &ImageRef,
    target: &ObjectKey,
    write_id: &str,
    e: StoreError,
) -> Result<ObjectInfo> {
    if !e.is_precondition_failed() {
        return Err(e.into());
    }
    match store.head(target).await? {
        Some(info) if info.write_id.as_deref() == Some(write_id) => Ok(info),
        _ => Err(Error::Conflict {
            message: format!(
                "another push of {image} is landing at the same moment; nothing was replaced — run `s3dock push {image}` again (it skips if the bucket then has this image)"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::clock::ManualClock;
    use crate::names::{EnvName, Version};
    use crate::registry::{EventMode, HistoryQuery, PromoteSource};
    use crate::store::faults::{Faulty, Op};
    use crate::store::{MemoryStore, ObjectStore, list_all, reader_from_bytes};

    fn setup() -> (Arc<MemoryStore>, Registry) {
        let (store, reg, _) = setup_with_clock();
        (store, reg)
    }

    fn setup_with_clock() -> (Arc<MemoryStore>, Registry, Arc<ManualClock>) {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2025, 7, 22, 10, 18, 0).unwrap()));
        (store.clone(), Registry::new(store, clock.clone(), "alice", EventMode::Inline), clock)
    }

    /// A valid Docker image id made of one repeated hex digit.
    fn id(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn facts(id: &str) -> PushFacts {
        PushFacts {
            image_id: id.into(),
            git_hash: "f7a5a27".repeat(5) + "abcde",
            git_time: "20250721-2118".into(),
            platform: Some("linux/amd64".into()),
            source: None,
            format: Some("docker-archive".into()),
            tar_bytes: None,
        }
    }

    async fn push_with(
        reg: &Registry,
        image: &ImageRef,
        id: &str,
        body: &'static [u8],
        force: bool,
    ) -> Result<PushOutcome> {
        match reg.plan_push(image, id, force).await? {
            PushPlan::Skip { record, reason } => Ok(PushOutcome::skipped(record, reason)),
            PushPlan::Upload(plan) => reg.push_archive(image, &facts(id), reader_from_bytes(body), plan).await,
        }
    }

    async fn push(reg: &Registry, image: &ImageRef, id: &str, body: &'static [u8]) -> Result<PushOutcome> {
        push_with(reg, image, id, body, false).await
    }

    fn image() -> ImageRef {
        ImageRef::parse("myapp:20250721-2118-f7a5a27").unwrap()
    }

    #[tokio::test]
    async fn push_commits_metadata_last_and_skips_known_images() {
        let (store, reg, clock) = setup_with_clock();
        let image = image();
        let out = push(&reg, &image, &id('a'), b"first archive").await.unwrap();
        assert!(out.skipped.is_none());
        assert!(matches!(out.event, Some(Ok(Outcome::Recorded { .. }))), "{:?}", out.event);
        assert_eq!(
            out.archive_key,
            layout::image_archive(&image.app, &image.tag),
            "a first push uses the tag's own key"
        );
        let rec = reg.image(&image).await.unwrap();
        assert_eq!(rec.metadata.image_id.as_deref(), Some(id('a').as_str()));
        assert_eq!(rec.metadata.pushed_by.as_deref(), Some("alice"));
        assert_eq!(rec.metadata.size, 13);
        assert!(rec.metadata.write_id.is_some() && rec.metadata.archive_etag.is_some());
        assert_eq!(rec.metadata.archive_path, None, "the archive beside the metadata needs no name");

        // Same image id: skipped before any export.
        let again = push(&reg, &image, &id('a'), b"would differ").await.unwrap();
        assert!(again.skipped.as_deref().unwrap().contains("image id"), "{:?}", again.skipped);
        assert!(again.digests.is_none());

        // Another image id, identical bytes: the MD5 check aborts the write.
        let same = push(&reg, &image, &id('b'), b"first archive").await.unwrap();
        assert!(same.skipped.as_deref().unwrap().contains("same MD5"), "{:?}", same.skipped);
        assert!(reg.list_archive(&image.app).await.unwrap().is_empty());

        // Different content, a minute later: the old pair is archived first, then replaced.
        clock.advance(chrono::Duration::minutes(1));
        let replaced = push(&reg, &image, &id('c'), b"second archive!").await.unwrap();
        assert_eq!(replaced.archived.len(), 2, "{:?}", replaced.archived);
        let archived: Vec<String> =
            list_all(&*store, "archive/").await.unwrap().iter().map(|o| o.key.to_string()).collect();
        assert_eq!(
            archived,
            [
                "archive/myapp/202507/myapp-20250721-2118-f7a5a27-archived-on-20250722-1019.json",
                "archive/myapp/202507/myapp-20250721-2118-f7a5a27-archived-on-20250722-1019.tar.gz"
            ]
        );
        let rec = reg.image(&image).await.unwrap();
        assert_eq!(rec.metadata.image_id.as_deref(), Some(id('c').as_str()));
        assert_eq!(rec.metadata.archived_previous.as_deref(), Some(archived[0].as_str()));
        assert_eq!(rec.metadata.replaced.as_ref().and_then(|r| r.image_id.clone()), Some(id('a')));
        let pushes =
            reg.history(&image.app, &HistoryQuery { types: vec!["push".into()], ..Default::default() }).await.unwrap();
        assert_eq!(pushes.len(), 2);
        assert_eq!(pushes[0].record.as_ref().unwrap().details["was_archived"], true);
        assert_eq!(pushes[0].record.as_ref().unwrap().details["verified"], "streamed");
        // The replaced archive is gone from images/ (it is in archive/), the new one is named.
        let images: Vec<String> =
            list_all(&*store, "images/").await.unwrap().iter().map(|o| o.key.to_string()).collect();
        assert_eq!(images.len(), 2, "{images:?}");
        assert_eq!(Some(rec.archive_key.to_string()), rec.metadata.archive_path);
    }

    /// Regression: a re-push replaced the archive in place before writing its metadata, so a
    /// crash (or a failed metadata write) in between left old metadata beside a new archive and
    /// every pull of the image failed. Now the new archive goes to its own key and the metadata
    /// swap is the only step readers see.
    #[tokio::test]
    async fn a_repush_that_fails_before_its_commit_leaves_the_old_image_whole() {
        let inner = MemoryStore::new();
        let store = Arc::new(Faulty::new(inner));
        let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2025, 7, 22, 10, 18, 0).unwrap()));
        let reg = Registry::new(store.clone(), clock, "alice", EventMode::Inline);
        let image = image();
        push(&reg, &image, &id('a'), b"first archive").await.unwrap();
        let before = reg.image(&image).await.unwrap();
        // The metadata write fails (credentials expired, a crash): nothing may change for readers.
        store.fail(Op::PutBytes, ".json", 1, |k| StoreError::AccessDenied { store: "test".into(), detail: k.into() });
        let e = push(&reg, &image, &id('b'), b"second archive!").await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unavailable, "{e}");
        let after = reg.image(&image).await.unwrap();
        assert_eq!(after.metadata, before.metadata);
        let obj = store.get(&after.archive_key, Default::default()).await.unwrap();
        let bytes = crate::store::read_to_vec(obj.body).await.unwrap();
        assert_eq!(bytes, b"first archive", "the metadata's archive is still the one it describes");
        let images: Vec<String> =
            list_all(&*store, "images/").await.unwrap().iter().map(|o| o.key.to_string()).collect();
        assert_eq!(images.len(), 2, "the uncommitted upload was removed again: {images:?}");
    }

    /// Regression: re-pushing different content under a tag that a pointer (or tag, or agent)
    /// references silently changed what it runs.
    #[tokio::test]
    async fn a_repush_under_a_referenced_tag_needs_force() {
        let (_store, reg, clock) = setup_with_clock();
        let image = image();
        push(&reg, &image, &id('a'), b"first archive").await.unwrap();
        let prod = EnvName::parse("production").unwrap();
        reg.promote(&PromoteSource::Image(image.clone()), &prod).await.unwrap();
        let e = push(&reg, &image, &id('b'), b"other bytes").await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Conflict, "{e}");
        assert!(e.to_string().contains("environment production") && e.to_string().contains("--force"), "{e}");
        assert_eq!(reg.image(&image).await.unwrap().metadata.image_id, Some(id('a')));

        clock.advance(chrono::Duration::minutes(1));
        let forced = push_with(&reg, &image, &id('b'), b"other bytes", true).await.unwrap();
        assert_eq!(forced.forced_over, ["environment production"]);
        let rec = reg.image(&image).await.unwrap();
        assert_eq!(rec.metadata.image_id, Some(id('b')));
        assert!(rec.metadata.replaced.as_ref().is_some_and(|r| r.forced));
        let pushes =
            reg.history(&image.app, &HistoryQuery { types: vec!["push".into()], ..Default::default() }).await.unwrap();
        let newest = pushes[0].record.as_ref().unwrap();
        assert_eq!(newest.details["forced"], true);
        assert_eq!(newest.details["replaced_image_id"], id('a'));

        // The same image id again is no change at all, referenced or not.
        let v = Version::parse("v1.0.0").unwrap();
        reg.tag(&image, &v, false).await.unwrap();
        assert!(push(&reg, &image, &id('b'), b"x").await.unwrap().skipped.is_some());
    }

    #[tokio::test]
    async fn a_failed_stream_leaves_nothing_visible() {
        let (store, reg) = setup();
        let image = image();
        struct Broken;
        impl tokio::io::AsyncRead for Broken {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Err(std::io::Error::other("docker save failed")))
            }
        }
        let PushPlan::Upload(plan) = reg.plan_push(&image, &id('a'), false).await.unwrap() else { panic!() };
        let e = reg.push_archive(&image, &facts(&id('a')), Box::pin(Broken), plan).await.unwrap_err();
        assert!(e.to_string().contains("docker save failed"), "{e}");
        assert!(list_all(&*store, "").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_concurrent_push_is_not_overwritten() {
        let (store, reg) = setup();
        let image = image();
        // Both plan against an empty bucket; one commits first.
        let PushPlan::Upload(ours) = reg.plan_push(&image, &id('0'), false).await.unwrap() else { panic!() };
        push(&reg, &image, &id('1'), b"their archive").await.unwrap();
        let e =
            reg.push_archive(&image, &facts(&id('0')), reader_from_bytes(&b"our archive"[..]), ours).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Conflict, "{e}");
        assert_eq!(reg.image(&image).await.unwrap().metadata.image_id, Some(id('1')));
        assert!(store.head(&layout::image_archive(&image.app, &image.tag)).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn image_ids_that_are_not_docker_ids_are_refused() {
        let (store, reg) = setup();
        let e = reg.plan_push(&image(), "postgres:16", false).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Usage, "{e}");
        assert!(list_all(&*store, "").await.unwrap().is_empty());
    }
}
