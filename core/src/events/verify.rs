//! `images/**.json` created: verify the archive against its metadata, audit the push, reject
//! (archive, audit, delete when unreferenced) a current upload that does not match.

use super::*;

impl Handlers {
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
            .ok_or_else(|| EventError::permanent(format!("{meta_key}: no archive key")))?;
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
                        .map_err(|e| EventError::transient(format!("reading {archive_key}: {e}")))?;
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
                    return Err(EventError::transient(format!("{archive_key}: read ended early")));
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
}
