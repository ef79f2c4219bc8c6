//! Environment pointers: promote and rollback, compare-and-swap.
//!
//! Each command holds its target image (`bucket::lease`) from before it checks the image until
//! its pointer is written, so a cleanup deciding at the same moment either sees the pointer or
//! makes the command refuse: a promotion can never land on an image that is being deleted.
//! Each write carries the command's write id, so a write whose response was lost is reported
//! as done (and audited, and announced) rather than as "unchanged" or a conflict.

use super::*;

impl Registry {
    /// Points `env` at `source` with compare-and-swap. Promoting what is already current is a
    /// no-op. Each lost race re-reads the pointer and decides again.
    pub async fn promote(&self, source: &PromoteSource, env: &EnvName) -> Result<PromoteOutcome> {
        let app = source.app().clone();
        // Validate the target before touching anything: it must exist and resolve.
        let image = self.promote_target(source).await?.2;
        self.ensure_preconditions().await?;
        let hold = lease::hold(&*self.store, &*self.clock, &image, &self.actor).await?;
        let result = async {
            // Resolve again under the hold: a deletion that finished before it is seen here.
            let (target_type, target_path, image, record, version) = self.promote_target(source).await?;
            self.write_pointer(
                &app,
                env,
                |_current| {
                    Ok(PointerDoc {
                        schema_version: Some(SCHEMA_VERSION),
                        target_type,
                        target_path: target_path.clone(),
                        promoted_at: self.clock.now(),
                        promoted_by: self.actor.clone(),
                        git_hash: record.metadata.git_hash.clone(),
                        git_time: record.metadata.git_time.clone(),
                        source_image: Some(image.to_string()),
                        source_tag: version.clone(),
                        action: Some(PointerAction::Promote),
                        ..Default::default()
                    })
                },
                &image,
                version.clone(),
                &hold,
            )
            .await
        }
        .await;
        hold.release(&*self.store).await;
        result
    }

    /// What a promotion writes: the target's type and path, the image, its record, the version.
    async fn promote_target(
        &self,
        source: &PromoteSource,
    ) -> Result<(TargetType, String, ImageRef, ImageRecord, Option<String>)> {
        Ok(match source {
            PromoteSource::Image(image) => {
                let record = self.image(image).await?;
                (TargetType::Image, record.archive_key_for_references().to_string(), image.clone(), record, None)
            }
            PromoteSource::Version(app, version) => {
                let resolved = self.resolve_version(app, version).await?;
                let tag_key = resolved.chain[0].clone();
                (TargetType::Tag, tag_key, resolved.record.image.clone(), resolved.record, Some(version.canonical()))
            }
        })
    }

    /// Points `env` back at what its pointer replaced (`previous`). Refuses to guess when the
    /// pointer changes under it: a rollback decided against one state is not replayed on
    /// another.
    pub async fn rollback(&self, app: &AppName, env: &EnvName) -> Result<PromoteOutcome> {
        let key = layout::pointer(app, env);
        let Some((current, etag)) = self.read_doc::<PointerDoc>(&key).await? else {
            return Err(Error::not_found(
                format!("{app} has no pointer for environment {env}"),
                format!("there is nothing to roll back; promote first: s3dock promote {app}:TAG {env}"),
            ));
        };
        let Some(prev) = current.previous.clone() else {
            return Err(Error::not_found(
                format!("{key} records no previous target (first promotion, or written by an older tool)"),
                format!("promote the image you want explicitly: s3dock promote {app}:TAG {env}"),
            ));
        };
        let as_doc = PointerDoc {
            schema_version: Some(SCHEMA_VERSION),
            target_type: prev.target_type,
            target_path: prev.target_path.clone(),
            promoted_at: self.clock.now(),
            promoted_by: self.actor.clone(),
            source_image: prev.source_image.clone(),
            source_tag: prev.source_tag.clone(),
            action: Some(PointerAction::Rollback),
            ..Default::default()
        };
        let image = bucket::resolve_doc(&*self.store, app, &as_doc).await?;
        self.image(&image).await?;
        self.ensure_preconditions().await?;
        let hold = lease::hold(&*self.store, &*self.clock, &image, &self.actor).await?;
        let result = async {
            let record = self.image(&image).await?;
            let version = if prev.target_type == TargetType::Tag { prev.source_tag.clone() } else { None };
            self.write_pointer(
                app,
                env,
                |now_current| {
                    if now_current.map(|(_, e)| e) != Some(&etag) {
                        return Err(Error::Conflict {
                            message: format!(
                                "{key} changed while rolling back; check `s3dock current {app} {env}` and run rollback again if still wanted"
                            ),
                        });
                    }
                    let mut doc = as_doc.clone();
                    doc.git_hash = record.metadata.git_hash.clone();
                    doc.git_time = record.metadata.git_time.clone();
                    doc.source_image = Some(image.to_string());
                    Ok(doc)
                },
                &image,
                version,
                &hold,
            )
            .await
        }
        .await;
        hold.release(&*self.store).await;
        result
    }

    /// The compare-and-swap loop shared by promote and rollback. `make` builds the new document
    /// from the current one (seq, previous and the write id are filled in here).
    async fn write_pointer(
        &self,
        app: &AppName,
        env: &EnvName,
        make: impl Fn(Option<(&PointerDoc, &ETag)>) -> Result<PointerDoc>,
        image: &ImageRef,
        version: Option<String>,
        hold: &lease::Hold,
    ) -> Result<PromoteOutcome> {
        let key = layout::pointer(app, env);
        let write_id = new_write_id(&*self.clock);
        for attempt in 1..=MAX_CAS_ATTEMPTS {
            let current = self.read_doc::<PointerDoc>(&key).await?;
            let mut doc = make(current.as_ref().map(|(d, e)| (d, e)))?;
            let (precondition, previous, seq) = match &current {
                None => (Precondition::IfAbsent, None, 1),
                Some((cur, etag)) => {
                    if cur.target_type == doc.target_type && cur.target_path == doc.target_path {
                        return Ok(PromoteOutcome {
                            key,
                            env: env.clone(),
                            image: image.clone(),
                            version,
                            seq: cur.seq(),
                            previous: cur.previous.as_ref().map(|p| p.target_path.clone()),
                            change: Change::Unchanged,
                            attempts: attempt,
                            event: None,
                        });
                    }
                    // `PointerDoc::validate` caps seq far below the overflow.
                    let seq = cur.seq().checked_add(1).filter(|s| *s <= docs::MAX_SEQ).ok_or_else(|| {
                        Error::integrity(format!(
                            "{key} has seq {}, beyond any real history; fix the pointer",
                            cur.seq()
                        ))
                    })?;
                    (Precondition::IfMatch(etag.clone()), Some(cur.as_previous()), seq)
                }
            };
            doc.seq = Some(seq);
            doc.previous = previous.clone();
            doc.write_id = Some(write_id.clone());
            doc.recent_writes = current
                .as_ref()
                .map(|(c, _)| docs::recent_writes(c.write_id.as_deref(), &c.recent_writes))
                .unwrap_or_default();
            hold.check_time(&*self.clock)?;
            let body = Bytes::from(docs::encode(&doc));
            let written =
                bucket::put_doc(&*self.store, &*self.clock, &key, body.clone(), precondition, &write_id).await?;
            // Superseded: ours landed (its answer was lost) and someone promoted on top of it;
            // it is done, and its event finds it no longer current (audited, nobody notified).
            let etag = match written {
                Written::Ours(etag) => etag,
                Written::Superseded => ETag(String::new()),
                Written::Conflict => {
                    // Lost a race: back off with jitter so contenders spread out, then re-read.
                    Backoff::CAS.wait(&*self.clock, attempt).await;
                    continue;
                }
            };
            let event = match &self.handlers {
                Some(h) => {
                    Some(h.fan_out_promotion(app, env, &key, &ObjectEvent::written(key.clone(), &etag, body)).await)
                }
                None => None,
            };
            return Ok(PromoteOutcome {
                key,
                env: env.clone(),
                image: image.clone(),
                version,
                seq,
                previous: previous.map(|p| p.source_image.unwrap_or(p.target_path)),
                change: if current.is_some() { Change::Updated } else { Change::Created },
                attempts: attempt,
                event,
            });
        }
        Err(Error::Conflict {
            message: format!("{key} kept changing under concurrent writers ({MAX_CAS_ATTEMPTS} attempts); try again"),
        })
    }
}
