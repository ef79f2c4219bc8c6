//! The layered push: the archive in the layered layout, composed from what the bucket already
//! holds where it can, committed exactly like any push (see [`crate::push`]).

use std::collections::HashMap;

use futures::future::BoxFuture;

use super::encode::{self, ReuseSource};
use crate::error::{Error, Result};
use crate::gzip::GzipOptions;
use crate::names::ImageRef;
use crate::push::{PushFacts, PushOutcome, Upload, landed};
use crate::registry::Registry;
use crate::store::{BoxReader, CopyRange, ETag, Precondition, PutOptions, StoreError};

/// The most earlier images whose archives a push looks into for ranges to reuse.
pub const MAX_SOURCES: usize = 6;

/// Opens the image's `docker save` stream again, when a composed attempt has to be redone.
pub type OpenArchive<'a, 'f> = &'a (dyn Fn() -> BoxFuture<'f, Result<BoxReader>> + Send + Sync);

impl Registry {
    /// Ranges of the app's archives in the bucket that a push of `image` may copy, by tar
    /// entry name: those of the images the pointers name first, then of the newest images.
    /// Only indexed archives still at the ETag their metadata committed count.
    pub async fn reusable_ranges(&self, image: &ImageRef) -> Result<HashMap<String, ReuseSource>> {
        let app = &image.app;
        let (envs, images) = futures::join!(self.list_envs(app), self.list_images(app, None));
        let mut candidates: Vec<ImageRef> = Vec::new();
        for env in envs.unwrap_or_default() {
            if let Ok(current) = env.image {
                candidates.push(current);
            }
        }
        for entry in images?.into_iter().filter(|e| e.metadata.is_some()).take(MAX_SOURCES) {
            candidates.push(entry.image);
        }
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|c| seen.insert(c.clone()));
        candidates.truncate(MAX_SOURCES);
        // Read at once; taken in the order above, so the pointers' images come first.
        let records = futures::future::join_all(candidates.iter().map(|c| self.image(c))).await;
        let mut out: HashMap<String, ReuseSource> = HashMap::new();
        for (candidate, record) in candidates.into_iter().zip(records) {
            let Ok(record) = record else { continue };
            let (Some(index), Some(etag)) = (&record.metadata.layers, &record.metadata.archive_etag) else { continue };
            for r in &index.ranges {
                let (Some(path), Some(_)) = (&r.path, &r.diff_id) else { continue };
                out.entry(path.clone()).or_insert_with(|| ReuseSource {
                    image: candidate.to_string(),
                    copy: CopyRange {
                        key: record.archive_key.clone(),
                        etag: ETag(etag.clone()),
                        offset: r.offset,
                        length: r.length,
                    },
                    range: r.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Pushes `image` in the layered layout: streams the `docker save` output `tar`, uploads
    /// the layers the bucket does not hold and copies the ones it does (when `reuse`), and
    /// commits. A composed attempt that fails before its commit (a source replaced meanwhile,
    /// a store that cannot copy ranges) is redone once with `reopen()`, uploading everything.
    #[allow(clippy::too_many_arguments)]
    pub async fn push_layered(
        &self,
        image: &ImageRef,
        facts: &PushFacts,
        tar: BoxReader,
        reopen: OpenArchive<'_, '_>,
        plan: Upload,
        gzip: GzipOptions,
        reuse: bool,
    ) -> Result<PushOutcome> {
        let sources = if reuse { self.reusable_ranges(image).await? } else { HashMap::new() };
        self.push_layered_from(image, facts, tar, reopen, plan, gzip, sources).await
    }

    /// [`Registry::push_layered`] with the ranges to reuse already looked up (a caller can look
    /// them up while `docker save` prepares its stream).
    #[allow(clippy::too_many_arguments)]
    pub async fn push_layered_from(
        &self,
        image: &ImageRef,
        facts: &PushFacts,
        tar: BoxReader,
        reopen: OpenArchive<'_, '_>,
        plan: Upload,
        gzip: GzipOptions,
        sources: HashMap<String, ReuseSource>,
    ) -> Result<PushOutcome> {
        if sources.is_empty() {
            return self.push_layered_once(image, facts, tar, plan, gzip, sources).await;
        }
        let retry = plan.clone();
        match self.push_layered_once(image, facts, tar, plan, gzip, sources).await {
            Err(e) if retry_without_reuse(&e) => {
                tracing::warn!(image = %image, error = %e, "composing from earlier archives failed; uploading everything");
                // The failed attempt left nothing visible: its key is still free.
                self.push_layered_once(image, facts, reopen().await?, retry, gzip, HashMap::new()).await
            }
            other => other,
        }
    }

    async fn push_layered_once(
        &self,
        image: &ImageRef,
        facts: &PushFacts,
        tar: BoxReader,
        plan: Upload,
        gzip: GzipOptions,
        sources: HashMap<String, ReuseSource>,
    ) -> Result<PushOutcome> {
        let store = self.store().clone();
        let (pieces, done) = encode::encode(tar, gzip, sources);
        let opts = PutOptions {
            precondition: Precondition::IfAbsent,
            write_id: Some(plan.write_id.clone()),
            ..Default::default()
        };
        let info = match store.compose(&plan.target, pieces, opts).await {
            Ok(info) => info,
            Err(e) => landed(&*store, image, &plan.target, &plan.write_id, e).await?,
        };
        let discard = |why: Error| {
            let (store, target, etag) = (store.clone(), plan.target.clone(), info.etag.clone());
            async move {
                if let Err(e) = store.delete_if(&target, &etag).await {
                    tracing::warn!(key = %target, error = %e, "could not remove an upload that was not committed; cleanup removes it");
                }
                why
            }
        };
        let Ok(encoded) = done.await else {
            return Err(discard(Error::integrity("the image stream ended early")).await);
        };
        if encoded.size != info.size {
            let why =
                Error::integrity(format!("{} holds {} bytes, {} were written", plan.target, info.size, encoded.size));
            return Err(discard(why).await);
        }
        if let Some(config) = &encoded.config_digest
            && config != &facts.image_id
        {
            let why = Error::integrity(format!(
                "the archive's config is {config}, not image {}: the engine exported another image; push again",
                facts.image_id
            ));
            return Err(discard(why).await);
        }
        let digests = encoded.digests.clone().unwrap_or(crate::digest::Digests {
            md5: String::new(),
            sha256: String::new(),
            size: encoded.size,
        });
        let tar_size = Some(encoded.index.tar_size());
        self.commit_upload(image, facts, plan, info, digests, Some((encoded.index, encoded.plan)), tar_size).await
    }
}

/// Whether a composed attempt's failure is worth one more attempt that uploads everything:
/// anything but a conflict with another push of the same tag.
fn retry_without_reuse(e: &Error) -> bool {
    !matches!(e, Error::Conflict { .. } | Error::Refused { .. } | Error::Usage { .. })
        && !matches!(e, Error::Store(StoreError::PreconditionFailed { .. }))
}
