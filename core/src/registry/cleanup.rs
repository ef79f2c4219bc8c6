//! Deleting old, unreferenced images.

use super::*;

impl Registry {
    /// What a tag or pointer (current or previous target) or an agent references: never
    /// deleted. Refuses (errors) when a tag or pointer cannot be read, since then it is unknown
    /// what it protects.
    async fn protected_images(&self, app: &AppName) -> Result<BTreeMap<ImageRef, String>> {
        let mut out = BTreeMap::new();
        for t in self.list_tags(app).await? {
            match (&t.doc, &t.image) {
                (Ok(_), Some(image)) => {
                    out.entry(image.clone()).or_insert_with(|| format!("tag {}", t.version.canonical()));
                }
                (Err(e), _) => {
                    return Err(Error::Refused {
                        message: format!("cannot read {} ({e}); refusing to clean up {app} until it is fixed", t.key),
                    });
                }
                (Ok(d), None) => {
                    return Err(Error::Refused {
                        message: format!(
                            "{} targets {:?}, which is not an image of {app}; refusing to clean up until it is fixed",
                            t.key, d.target_path
                        ),
                    });
                }
            }
        }
        for e in self.list_envs(app).await? {
            let doc = e.pointer.map_err(|why| Error::Refused {
                message: format!("cannot read {} ({why}); refusing to clean up {app} until it is fixed", e.key),
            })?;
            if let Ok(image) = bucket::resolve_doc(&*self.store, app, &doc).await {
                out.entry(image).or_insert_with(|| format!("environment {}", e.env));
            } else if let Ok(image) = &e.image {
                out.entry(image.clone()).or_insert_with(|| format!("environment {}", e.env));
            } else {
                return Err(Error::Refused {
                    message: format!("{} does not resolve; refusing to clean up {app} until it is fixed", e.key),
                });
            }
            if let Some(prev) = &doc.previous {
                let as_doc =
                    PointerDoc { target_type: prev.target_type, target_path: prev.target_path.clone(), ..doc.clone() };
                if let Ok(image) = bucket::resolve_doc(&*self.store, app, &as_doc).await {
                    out.entry(image).or_insert_with(|| format!("rollback target of {}", e.env));
                }
            }
        }
        for (_, reg) in self.list_agents(app, None).await? {
            if let Ok(reg) = reg
                && let Some(image) = reg.state.and_then(|s| s.image).and_then(|i| ImageRef::parse(&i).ok())
                && &image.app == app
            {
                out.entry(image).or_insert_with(|| format!("running on agent {}", reg.agent_id));
            }
        }
        Ok(out)
    }

    /// Keeps the newest `keep` images of each app, everything referenced, and everything pushed
    /// less than `grace` ago; with `dry_run` only reports. Archives no metadata names (an
    /// unfinished push, or the one a re-push replaced and archived) are removed once older than
    /// [`ORPHAN_GRACE`]. Never touches `archive/` or `audit/`.
    ///
    /// Each image goes through the delete lease (`bucket::lease`): claimed, checked for holds
    /// and references once more, audited (one `cleanup` record per image, written before it is
    /// deleted, in every event mode), then deleted metadata first, each object only while it is
    /// the version inspected. A tag or promotion made meanwhile spares the image.
    pub async fn cleanup(
        &self,
        app: Option<&AppName>,
        keep: usize,
        grace: Duration,
        dry_run: bool,
    ) -> Result<CleanupReport> {
        let apps = match app {
            Some(a) => vec![a.clone()],
            None => self.list_apps().await?,
        };
        if !dry_run {
            self.ensure_preconditions().await?;
        }
        let mut report = CleanupReport { dry_run, keep, grace_seconds: grace.num_seconds(), apps: Vec::new() };
        for app in apps {
            let protected = self.protected_images(&app).await?;
            let images = self.list_images(&app, None).await?;
            let mut out = AppCleanup { app: app.to_string(), ..Default::default() };
            let mut newest = 0usize;
            let now = self.clock.now();
            let mut doomed: Vec<(ImageEntry, Vec<ObjectInfo>, Option<ETag>, CleanupItem)> = Vec::new();
            for e in images {
                let item = |keys: &[&ObjectInfo], reason: String| CleanupItem {
                    image: e.image.to_string(),
                    keys: keys.iter().map(|o| o.key.to_string()).collect(),
                    bytes: keys.iter().map(|o| o.size).sum(),
                    reason,
                };
                let old = |o: &ObjectInfo, grace: Duration| o.last_modified.is_some_and(|t| now - t > grace);
                // Which archive the metadata commits; the others are leftovers.
                let named = match &e.metadata {
                    Some(m) => match self.read_doc::<ImageMetadata>(&m.key).await {
                        Ok(Some((meta, etag))) => {
                            bucket::archive_key(&m.key, &meta).map(|k| (k, etag, meta.created_at, meta.archive_etag))
                        }
                        Ok(None) => continue,
                        Err(Error::Document(d)) => {
                            out.kept.push(item(&[m], format!("unreadable metadata left for inspection ({d})")));
                            continue;
                        }
                        Err(err) => return Err(err),
                    },
                    None => None,
                };
                let (current, leftovers): (Vec<&ObjectInfo>, Vec<&ObjectInfo>) =
                    e.archives.iter().partition(|a| named.as_ref().is_some_and(|(k, ..)| &a.key == k));
                // Leftover archives go once they are old enough whatever happens to the image:
                // nothing names them, and a re-push archived them before letting go.
                let stale: Vec<ObjectInfo> =
                    leftovers.iter().filter(|a| old(a, ORPHAN_GRACE)).map(|a| (*a).clone()).collect();
                for l in leftovers.iter().filter(|a| !old(a, ORPHAN_GRACE)) {
                    out.kept.push(item(&[*l], "unfinished or replaced upload, possibly still in progress".into()));
                }
                let (Some(meta_obj), Some((_, meta_etag, created_at, _))) = (&e.metadata, &named) else {
                    if !stale.is_empty() {
                        let refs: Vec<&ObjectInfo> = stale.iter().collect();
                        let it = item(
                            &refs,
                            format!("unfinished upload (no metadata names it) older than {}", human(ORPHAN_GRACE)),
                        );
                        doomed.push((e.clone(), stale, None, it));
                    }
                    continue;
                };
                if current.is_empty() {
                    out.kept.push(item(&[meta_obj], "metadata without archive: left for inspection".into()));
                    continue;
                }
                let mut whole: Vec<&ObjectInfo> = vec![meta_obj];
                whole.extend(current.iter().copied());
                if !stale.is_empty() {
                    let refs: Vec<&ObjectInfo> = stale.iter().collect();
                    let it = item(&refs, "archive a re-push replaced (it was archived)".into());
                    doomed.push((e.clone(), stale.clone(), None, it));
                }
                if let Some(why) = protected.get(&e.image) {
                    out.kept.push(item(&whole, format!("referenced: {why}")));
                } else if now - *created_at < grace {
                    out.kept.push(item(&whole, format!("pushed less than {} ago", human(grace))));
                } else if newest < keep {
                    newest += 1;
                    out.kept.push(item(&whole, format!("among the newest {keep}")));
                } else {
                    let objects: Vec<ObjectInfo> = whole.iter().map(|o| (*o).clone()).collect();
                    let it = item(&whole, format!("older than the newest {keep}, not referenced"));
                    doomed.push((e.clone(), objects, Some(meta_etag.clone()), it));
                }
            }
            if dry_run {
                out.freed_bytes = doomed.iter().map(|(.., i)| i.bytes).sum();
                out.deleted = doomed.into_iter().map(|(.., i)| i).collect();
            } else {
                for (e, objects, meta_etag, item) in doomed {
                    if self.delete_image(&app, &e.image, &objects, meta_etag.as_ref(), &item).await? {
                        out.freed_bytes += item.bytes;
                        out.deleted.push(item);
                    } else {
                        out.spared.push(e.image.to_string());
                    }
                }
            }
            report.apps.push(out);
        }
        Ok(report)
    }

    /// Deletes `objects` of `image` (its metadata first, when `meta_etag` says the metadata is
    /// among them) under the delete lease. `Ok(false)` when it was spared: held, referenced, or
    /// changed since it was inspected.
    async fn delete_image(
        &self,
        app: &AppName,
        image: &ImageRef,
        objects: &[ObjectInfo],
        meta_etag: Option<&ETag>,
        item: &CleanupItem,
    ) -> Result<bool> {
        let tomb = match lease::claim(&*self.store, &*self.clock, image, &self.actor).await? {
            Ok(t) => t,
            Err(_) => return Ok(false),
        };
        let result = async {
            if meta_etag.is_some() && !bucket::references(&*self.store, image).await?.is_empty() {
                return Ok(false);
            }
            if !tomb.check_time(&*self.clock) {
                return Ok(false);
            }
            // The record first: a deletion is never unaudited, even if this process dies next.
            let etag8: String = objects
                .first()
                .map(|o| o.etag.normalized().chars().filter(char::is_ascii_alphanumeric).take(8).collect())
                .unwrap_or_default();
            let now = self.clock.now();
            let rec = AuditRecord {
                schema_version: Some(SCHEMA_VERSION),
                event_type: EventType::Cleanup.as_str().into(),
                timestamp: now,
                user: self.actor.clone(),
                app_name: app.to_string(),
                details: serde_json::to_value(CleanupDetails {
                    image_reference: image.to_string(),
                    keys: item.keys.clone(),
                    bytes: item.bytes,
                    reason: item.reason.clone(),
                })
                .unwrap_or_default(),
                recorded_by: Some(Origin::Cli.as_str().into()),
                write_id: Some(new_write_id(&*self.clock)),
                ..Default::default()
            };
            let key = layout::audit(
                app,
                now,
                EventType::Cleanup.as_str(),
                image.tag.hash7(),
                &[&image.tag.to_string(), &etag8],
            );
            bucket::write_audit(&*self.store, &*self.clock, &key, &rec).await?;
            for (i, o) in objects.iter().enumerate() {
                match self.store.delete_if(&o.key, &o.etag).await {
                    Ok(()) => {}
                    // The metadata changed (a re-push) or went: the image is not what was judged.
                    Err(e) if (e.is_precondition_failed() || e.is_not_found()) && i == 0 && meta_etag.is_some() => {
                        return Ok(false);
                    }
                    Err(e) if e.is_precondition_failed() || e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(true)
        }
        .await;
        tomb.release(&*self.store).await;
        result
    }
}

/// `24h`, `90m`, `30s`.
fn human(d: Duration) -> String {
    crate::duration::show(d.to_std().unwrap_or_default())
}
