//! Semantic-version tags: immutable unless forced.

use super::*;

impl Registry {
    /// The tag file of a version, looking under every spelling the original tool may have used.
    pub async fn read_tag(&self, app: &AppName, version: &Version) -> Result<Option<(ObjectKey, TagDoc, ETag)>> {
        for key in layout::tag_candidates(app, version) {
            if let Some((doc, etag)) = self.read_doc::<TagDoc>(&key).await? {
                return Ok(Some((key, doc, etag)));
            }
        }
        Ok(None)
    }

    /// Tags `image` as `version`. Tags are immutable: the same image again is a no-op; another
    /// image is refused unless `force`, which archives the old tag file first and records the
    /// move in the new one (so the audit shows it). A tag the original tool wrote under its bare
    /// key (`1.2.0.json`) is moved where it lives, so pointers that follow it move with it.
    ///
    /// The image is held (`bucket::lease`) while the tag is written, so a cleanup deciding at
    /// the same moment either sees the tag or makes this command refuse.
    pub async fn tag(&self, image: &ImageRef, version: &Version, force: bool) -> Result<TagOutcome> {
        self.image(image).await?;
        self.ensure_preconditions().await?;
        let hold = lease::hold(&*self.store, &*self.clock, image, &self.actor).await?;
        let result = async {
            // Read again under the hold: a deletion that finished before it is seen here.
            let record = self.image(image).await?;
            self.tag_held(image, version, force, &record, &hold).await
        }
        .await;
        hold.release(&*self.store).await;
        result
    }

    async fn tag_held(
        &self,
        image: &ImageRef,
        version: &Version,
        force: bool,
        record: &ImageRecord,
        hold: &lease::Hold,
    ) -> Result<TagOutcome> {
        let app = &image.app;
        let write_id = new_write_id(&*self.clock);
        for attempt in 1..=MAX_CAS_ATTEMPTS {
            let existing = self.read_tag(app, version).await?;
            let now = self.clock.now();
            let mut doc = TagDoc {
                schema_version: Some(SCHEMA_VERSION),
                target_type: TargetType::Image,
                target_path: record.archive_key_for_references().to_string(),
                promoted_at: now,
                promoted_by: self.actor.clone(),
                git_hash: record.metadata.git_hash.clone(),
                git_time: record.metadata.git_time.clone(),
                source_image: Some(image.to_string()),
                source_tag: None,
                version: Some(version.canonical()),
                image_id: record.metadata.image_id.clone(),
                previous: None,
                archived_to: None,
                write_id: Some(write_id.clone()),
                recent_writes: Vec::new(),
            };
            let (key, precondition, archived_to, previous) = match existing {
                None => (layout::tag(app, version), Precondition::IfAbsent, None, None),
                Some((key, old, etag)) => {
                    let old_image = bucket::target_image(app, &old.target_path).ok();
                    if old_image.as_ref() == Some(image) {
                        return Ok(TagOutcome {
                            key,
                            image: image.clone(),
                            version: version.clone(),
                            change: Change::Unchanged,
                            previous: None,
                            archived_to: None,
                            event: None,
                        });
                    }
                    let shown = old_image.map(|i| i.to_string()).unwrap_or_else(|| old.target_path.clone());
                    if !force {
                        return Err(Error::Conflict {
                            message: format!(
                                "{app} {} already points to {shown}; tags are immutable: choose a new version, or pass --force to move it (the old tag file is archived)",
                                version.canonical()
                            ),
                        });
                    }
                    let month = now.format("%Y%m").to_string();
                    let stem = layout::tag_archive_stem(version);
                    let dst = bucket::archive_copy(&*self.store, &key, |n| {
                        layout::archive(app, &month, &stem, now, n, layout::JSON_EXT)
                    })
                    .await?;
                    doc.previous = Some(docs::PreviousTarget {
                        target_type: old.target_type,
                        target_path: old.target_path.clone(),
                        source_image: old.source_image.clone().or(Some(shown.clone())),
                        source_tag: None,
                        seq: None,
                    });
                    doc.archived_to = Some(dst.to_string());
                    doc.recent_writes = docs::recent_writes(old.write_id.as_deref(), &old.recent_writes);
                    // Moved where it lives: pointers name this very key.
                    (key, Precondition::IfMatch(etag), Some(dst), Some(shown))
                }
            };
            hold.check_time(&*self.clock)?;
            let body = Bytes::from(docs::encode(&doc));
            let written =
                bucket::put_doc(&*self.store, &*self.clock, &key, body.clone(), precondition, &write_id).await?;
            match written {
                // Superseded: ours landed and a forced move replaced it before we could look.
                Written::Ours(_) | Written::Superseded => {
                    let etag = match written {
                        Written::Ours(etag) => etag,
                        _ => ETag(String::new()),
                    };
                    let event = match &self.handlers {
                        Some(h) => Some(
                            h.record_tag(app, version, &key, &ObjectEvent::written(key.clone(), &etag, body)).await,
                        ),
                        None => None,
                    };
                    let change = if previous.is_some() { Change::Updated } else { Change::Created };
                    return Ok(TagOutcome {
                        key,
                        image: image.clone(),
                        version: version.clone(),
                        change,
                        previous,
                        archived_to,
                        event,
                    });
                }
                // Lost a race: re-read and decide again.
                Written::Conflict => Backoff::CAS.wait(&*self.clock, attempt).await,
            }
        }
        Err(Error::Conflict {
            message: format!("{} kept changing under concurrent writers; try again", layout::tag(app, version)),
        })
    }
}
