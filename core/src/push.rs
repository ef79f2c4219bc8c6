//! The bucket side of a push: decide whether to upload, stream the archive in, archive what it
//! replaces, and commit with the metadata.
//!
//! Order and conditions, which together mean no upload is ever lost:
//! 1. Plan: metadata for this tag with the same Docker image id means the image is already
//!    there: skip without exporting anything (`docker save` is not byte-stable, so comparing
//!    MD5s alone would almost never skip).
//! 2. Stream the gzipped archive into the store, hashing it on the way (MD5, SHA-256, size).
//! 3. Just before the upload becomes visible (the store's commit check): if the MD5 equals the
//!    existing metadata's, abort — identical content, nothing to replace. Otherwise copy what
//!    is there to `archive/` (conditional creates: archive objects are never overwritten).
//! 4. The upload commits conditionally: `If-Match` on the archive ETag seen at planning (or
//!    `If-None-Match: *` if there was none). A concurrent pusher that got there first makes
//!    this fail, and we report it rather than overwrite their upload.
//! 5. The metadata is written last, also conditionally; it is the commit marker readers and
//!    the verifier rely on. An interrupted push leaves no metadata and, since the multipart
//!    upload is aborted (or never completed), no visible archive.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::digest::{Digests, HashingReader};
use crate::docs::{self, ImageMetadata, SCHEMA_VERSION};
use crate::error::{Error, Result};
use crate::events::{self, EventError, ObjectEvent, Outcome, Verification};
use crate::layout;
use crate::names::{ImageRef, ObjectKey};
use crate::registry::{ImageRecord, Registry};
use crate::store::{BoxReader, ETag, ObjectInfo, Precondition, PutOptions, StoreError, read_small};

/// What the image itself says about where it came from (its labels and `docker inspect`).
#[derive(Debug, Clone, Default, PartialEq)]
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
}

/// What is in the bucket under the tag being pushed.
#[derive(Debug, Clone, Default)]
pub struct Existing {
    /// The metadata, if present and readable.
    pub metadata: Option<ImageMetadata>,
    /// The metadata object's ETag, present even when the document is unreadable.
    pub metadata_etag: Option<ETag>,
    pub archive: Option<ObjectInfo>,
}

#[derive(Debug, Clone)]
pub enum PushPlan {
    /// The bucket holds this image already.
    Skip { record: ImageRecord, reason: String },
    /// Upload; `existing` is what will be archived if the content differs.
    Upload { existing: Existing },
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
    pub event: Option<std::result::Result<Outcome, EventError>>,
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
            event: None,
        }
    }
}

/// The reason the commit check gives when the upload turns out identical.
const SAME_CONTENT: &str = "identical content: the bucket already has an archive with this MD5";

impl Registry {
    /// Decides whether `image` (with Docker id `image_id`) needs uploading.
    pub async fn plan_push(&self, image: &ImageRef, image_id: &str) -> Result<PushPlan> {
        let meta_key = layout::image_metadata(&image.app, &image.tag);
        let archive_key = layout::image_archive(&image.app, &image.tag);
        let mut existing = Existing::default();
        if let Some((bytes, info)) = read_small(&**self.store(), &meta_key, docs::MAX_DOC_BYTES).await? {
            existing.metadata_etag = Some(info.etag);
            match docs::decode::<ImageMetadata>(meta_key.as_str(), &bytes) {
                Ok(m) => existing.metadata = Some(m),
                Err(e) => {
                    tracing::warn!(key = %meta_key, error = %e, "existing metadata is unreadable; it will be archived and replaced")
                }
            }
        }
        existing.archive = self.store().head(&archive_key).await?;
        if let (Some(m), Some(a)) = (&existing.metadata, &existing.archive)
            && m.image_id.as_deref() == Some(image_id)
            && m.size == a.size
            && m.app_name == image.app.as_str()
            && m.image_tag == image.to_string()
        {
            let record = ImageRecord {
                image: image.clone(),
                metadata_key: meta_key,
                archive_key,
                metadata: m.clone(),
                archive_size: a.size,
            };
            return Ok(PushPlan::Skip {
                record,
                reason: format!("the bucket already has {image} with image id {image_id}"),
            });
        }
        Ok(PushPlan::Upload { existing })
    }

    /// Streams the gzipped archive `body` to the bucket and commits it (see the module doc).
    pub async fn push_archive(
        &self,
        image: &ImageRef,
        facts: &PushFacts,
        body: BoxReader,
        existing: Existing,
    ) -> Result<PushOutcome> {
        let store = self.store().clone();
        let archive_key = layout::image_archive(&image.app, &image.tag);
        let metadata_key = layout::image_metadata(&image.app, &image.tag);
        let hashing = HashingReader::new(body);
        let handle = hashing.handle();
        let archived: Arc<Mutex<Vec<ObjectKey>>> = Arc::default();

        let check = {
            let store = store.clone();
            let handle = handle.clone();
            let archived = archived.clone();
            let existing = existing.clone();
            let image = image.clone();
            let clock = self.clock().clone();
            let (archive_key, metadata_key) = (archive_key.clone(), metadata_key.clone());
            move || -> futures::future::BoxFuture<'static, std::result::Result<(), String>> {
                Box::pin(async move {
                    let d = handle.digests().ok_or("the image stream ended early")?;
                    if let Some(m) = &existing.metadata
                        && m.checksum == d.md5
                        && m.size == d.size
                    {
                        return Err(SAME_CONTENT.to_owned());
                    }
                    // Different content is about to replace what is there: keep a copy first.
                    let now = clock.now();
                    let stem = layout::image_stem(&image.app, &image.tag);
                    let month = image.tag.month();
                    for (present, key, ext) in [
                        (existing.archive.is_some(), &archive_key, layout::ARCHIVE_EXT),
                        (existing.metadata_etag.is_some(), &metadata_key, layout::JSON_EXT),
                    ] {
                        if !present {
                            continue;
                        }
                        let dst = events::archive_copy(&*store, key, |n| {
                            layout::archive(&image.app, &month, &stem, now, n, ext)
                        })
                        .await;
                        match dst {
                            Ok(dst) => archived.lock().unwrap_or_else(|p| p.into_inner()).push(dst),
                            // Gone since planning (a concurrent push or cleanup): nothing to keep.
                            Err(e) if e.is_not_found() => {}
                            Err(e) => return Err(format!("could not archive {key} before replacing it: {e}")),
                        }
                    }
                    Ok(())
                })
            }
        };
        let precondition = match &existing.archive {
            Some(a) => Precondition::IfMatch(a.etag.clone()),
            None => Precondition::IfAbsent,
        };
        let put = store
            .put_stream(
                &archive_key,
                Box::pin(hashing),
                PutOptions { precondition, commit_check: Some(Box::new(check)), size_hint: None },
            )
            .await;
        let archive_info = match put {
            Ok(info) => info,
            Err(StoreError::Aborted { reason, .. }) if reason == SAME_CONTENT => {
                return Ok(PushOutcome {
                    image: image.clone(),
                    archive_key,
                    metadata_key,
                    digests: handle.digests(),
                    skipped: Some(format!("the bucket already has {image} with the same MD5")),
                    archived: vec![],
                    event: None,
                });
            }
            Err(e) if e.is_precondition_failed() || e.is_not_found() => {
                return Err(Error::Conflict {
                    message: format!(
                        "another push of {image} landed while this one was uploading; nothing was replaced — run `s3dock push {image}` again (it skips if the bucket now has this image)"
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let digests = handle.digests().ok_or_else(|| Error::integrity("the image stream ended early"))?;
        let archived: Vec<ObjectKey> = archived.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let meta = ImageMetadata {
            schema_version: Some(SCHEMA_VERSION),
            checksum: digests.md5.clone(),
            size: digests.size,
            created_at: self.clock().now(),
            git_hash: facts.git_hash.clone(),
            git_time: facts.git_time.clone(),
            image_tag: image.to_string(),
            app_name: image.app.to_string(),
            sha256: Some(digests.sha256.clone()),
            image_id: Some(facts.image_id.clone()),
            platform: facts.platform.clone(),
            pushed_by: Some(self.actor().to_owned()),
            source: facts.source.clone(),
            format: facts.format.clone(),
            archived_previous: archived.iter().find(|k| k.as_str().ends_with(layout::JSON_EXT)).map(|k| k.to_string()),
        };
        self.commit_metadata(image, &metadata_key, &archive_key, &archive_info.etag, &meta, existing.metadata_etag)
            .await?;
        let event = match self.handlers() {
            Some(h) => Some(
                h.verify_upload(
                    &image.app,
                    &metadata_key,
                    &ObjectEvent::inline(metadata_key.clone()),
                    Verification::Streamed(digests.clone()),
                )
                .await,
            ),
            None => None,
        };
        Ok(PushOutcome {
            image: image.clone(),
            archive_key,
            metadata_key,
            digests: Some(digests),
            skipped: None,
            archived,
            event,
        })
    }

    /// Writes the metadata conditionally. If someone changed it since planning but the
    /// archive is still ours, ours is the truth: re-read its ETag and write again. If the
    /// archive is no longer ours, a later push won and wrote (or will write) its own metadata.
    async fn commit_metadata(
        &self,
        image: &ImageRef,
        metadata_key: &ObjectKey,
        archive_key: &ObjectKey,
        our_archive: &ETag,
        meta: &ImageMetadata,
        mut seen: Option<ETag>,
    ) -> Result<()> {
        let body = Bytes::from(docs::encode(meta));
        for _ in 0..10 {
            let precondition = match &seen {
                Some(etag) => Precondition::IfMatch(etag.clone()),
                None => Precondition::IfAbsent,
            };
            match self.store().put_bytes(metadata_key, body.clone(), precondition).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_precondition_failed() || e.is_not_found() => {
                    let still_ours = self.store().head(archive_key).await?.is_some_and(|a| &a.etag == our_archive);
                    if !still_ours {
                        return Err(Error::Conflict {
                            message: format!(
                                "another push of {image} replaced this one right after it landed (this upload was archived); run `s3dock push {image}` again if this image should win"
                            ),
                        });
                    }
                    seen = self.store().head(metadata_key).await?.map(|i| i.etag);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict {
            message: format!("{metadata_key} kept changing under concurrent pushes; run the push again"),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::clock::ManualClock;
    use crate::registry::{EventMode, HistoryQuery};
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

    fn facts(id: &str) -> PushFacts {
        PushFacts {
            image_id: id.into(),
            git_hash: "f7a5a27".repeat(5) + "abcde",
            git_time: "20250721-2118".into(),
            platform: Some("linux/amd64".into()),
            source: None,
            format: Some("docker-archive".into()),
        }
    }

    async fn push(reg: &Registry, image: &ImageRef, id: &str, body: &'static [u8]) -> Result<PushOutcome> {
        match reg.plan_push(image, id).await? {
            PushPlan::Skip { record, reason } => Ok(PushOutcome::skipped(record, reason)),
            PushPlan::Upload { existing } => {
                reg.push_archive(image, &facts(id), reader_from_bytes(body), existing).await
            }
        }
    }

    #[tokio::test]
    async fn push_commits_metadata_last_and_skips_known_images() {
        let (store, reg, clock) = setup_with_clock();
        let image = ImageRef::parse("myapp:20250721-2118-f7a5a27").unwrap();
        let out = push(&reg, &image, "sha256:aaa", b"first archive").await.unwrap();
        assert!(out.skipped.is_none());
        assert!(matches!(out.event, Some(Ok(Outcome::Recorded { .. }))), "{:?}", out.event);
        let rec = reg.image(&image).await.unwrap();
        assert_eq!(rec.metadata.image_id.as_deref(), Some("sha256:aaa"));
        assert_eq!(rec.metadata.pushed_by.as_deref(), Some("alice"));
        assert_eq!(rec.metadata.size, 13);

        // Same image id: skipped before any export.
        let again = push(&reg, &image, "sha256:aaa", b"would differ").await.unwrap();
        assert!(again.skipped.as_deref().unwrap().contains("image id"), "{:?}", again.skipped);
        assert!(again.digests.is_none());

        // Another image id, identical bytes: the MD5 check aborts the write.
        let same = push(&reg, &image, "sha256:bbb", b"first archive").await.unwrap();
        assert!(same.skipped.as_deref().unwrap().contains("same MD5"), "{:?}", same.skipped);
        assert!(reg.list_archive(&image.app).await.unwrap().is_empty());

        // Different content, a minute later: the old pair is archived first, then replaced.
        clock.advance(chrono::Duration::minutes(1));
        let replaced = push(&reg, &image, "sha256:ccc", b"second archive!").await.unwrap();
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
        assert_eq!(rec.metadata.image_id.as_deref(), Some("sha256:ccc"));
        assert_eq!(rec.metadata.archived_previous.as_deref(), Some(archived[0].as_str()));
        let pushes =
            reg.history(&image.app, &HistoryQuery { types: vec!["push".into()], ..Default::default() }).await.unwrap();
        assert_eq!(pushes.len(), 2);
        assert_eq!(pushes[0].record.as_ref().unwrap().details["was_archived"], true);
        assert_eq!(pushes[0].record.as_ref().unwrap().details["verified"], "streamed");
    }

    #[tokio::test]
    async fn a_failed_stream_leaves_nothing_visible() {
        let (store, reg) = setup();
        let image = ImageRef::parse("myapp:20250721-2118-f7a5a27").unwrap();
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
        let PushPlan::Upload { existing } = reg.plan_push(&image, "sha256:aaa").await.unwrap() else { panic!() };
        let e = reg.push_archive(&image, &facts("sha256:aaa"), Box::pin(Broken), existing).await.unwrap_err();
        assert!(e.to_string().contains("docker save failed"), "{e}");
        assert!(list_all(&*store, "").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_concurrent_push_is_not_overwritten() {
        let (store, reg) = setup();
        let image = ImageRef::parse("myapp:20250721-2118-f7a5a27").unwrap();
        // Both plan against an empty bucket; one commits first.
        let PushPlan::Upload { existing: ours } = reg.plan_push(&image, "sha256:ours").await.unwrap() else { panic!() };
        push(&reg, &image, "sha256:theirs", b"their archive").await.unwrap();
        let e = reg
            .push_archive(&image, &facts("sha256:ours"), reader_from_bytes(&b"our archive"[..]), ours)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Conflict, "{e}");
        assert_eq!(reg.image(&image).await.unwrap().metadata.image_id.as_deref(), Some("sha256:theirs"));
        assert!(store.head(&layout::image_archive(&image.app, &image.tag)).await.unwrap().is_some());
    }
}
