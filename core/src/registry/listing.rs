//! What the bucket holds: apps, images, tags, environments, agents, archive.

use super::*;

impl Registry {
    /// Every app with images, tags or pointers.
    pub async fn list_apps(&self) -> Result<Vec<AppName>> {
        let mut apps = BTreeSet::new();
        for top in [layout::IMAGES, layout::TAGS, layout::POINTERS] {
            for p in list_prefixes(&*self.store, top).await? {
                let name = p.trim_start_matches(top).trim_end_matches('/');
                if let Ok(app) = AppName::parse(name) {
                    apps.insert(app);
                }
            }
        }
        Ok(apps.into_iter().collect())
    }

    /// The images of an app, newest tag first; `month` (`YYYYMM`) narrows to one folder.
    pub async fn list_images(&self, app: &AppName, month: Option<&str>) -> Result<Vec<ImageEntry>> {
        let prefix = match month {
            Some(m) => {
                if m.len() != 6 || !m.chars().all(|c| c.is_ascii_digit()) {
                    return Err(Error::Refused { message: format!("--month {m:?} is not YYYYMM (e.g. 202507)") });
                }
                layout::images_month_prefix(app, m)
            }
            None => layout::images_prefix(app),
        };
        let mut by_image: BTreeMap<(ImageRef, String), ImageEntry> = BTreeMap::new();
        for obj in list_all(&*self.store, &prefix).await? {
            let (image, month, is_archive) = match layout::classify(&obj.key) {
                Ok(BucketKey::ImageArchive { app: a, month, tag, .. }) if &a == app => {
                    (ImageRef::new(a, tag), month, true)
                }
                Ok(BucketKey::ImageMetadata { app: a, month, tag }) if &a == app => {
                    (ImageRef::new(a, tag), month, false)
                }
                _ => continue,
            };
            let e = by_image.entry((image.clone(), month.clone())).or_insert(ImageEntry {
                image,
                month,
                archive: None,
                metadata: None,
                archives: Vec::new(),
            });
            if is_archive {
                e.archives.push(obj);
            } else {
                e.metadata = Some(obj);
            }
        }
        let mut out: Vec<ImageEntry> = by_image.into_values().collect();
        for e in &mut out {
            // Without reading the metadata, the newest archive is the likely current one (a
            // re-push writes a new one and deletes the old after committing).
            e.archive = e.archives.iter().max_by_key(|a| a.last_modified).cloned();
        }
        out.sort_by(|a, b| b.image.tag.cmp(&a.image.tag).then_with(|| b.month.cmp(&a.month)));
        Ok(out)
    }

    /// The tags of an app in semver precedence order, with the image each names.
    pub async fn list_tags(&self, app: &AppName) -> Result<Vec<TagEntry>> {
        let objects = list_all(&*self.store, &layout::tags_prefix(app)).await?;
        let entries = futures::stream::iter(objects.into_iter().filter_map(|o| match layout::classify(&o.key) {
            Ok(BucketKey::Tag { version, .. }) => Some((o.key, version)),
            _ => None,
        }))
        .map(|(key, version)| async move {
            let doc = match read_small(&*self.store, &key, docs::MAX_DOC_BYTES).await {
                Ok(Some((b, _))) => docs::decode::<TagDoc>(key.as_str(), &b).map_err(|e| e.to_string()),
                Ok(None) => Err("deleted while listing".to_owned()),
                Err(e) => return Err(Error::from(e)),
            };
            let image = doc.as_ref().ok().and_then(|d| bucket::target_image(app, &d.target_path).ok());
            Ok(TagEntry { version, key, doc, image })
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
        let mut out = entries.into_iter().collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.version.cmp(&b.version).then_with(|| a.key.cmp(&b.key)));
        Ok(out)
    }

    /// The environments of an app with what each resolves to (errors per environment).
    pub async fn list_envs(&self, app: &AppName) -> Result<Vec<EnvEntry>> {
        let objects = list_all(&*self.store, &layout::pointers_prefix(app)).await?;
        let entries = futures::stream::iter(objects.into_iter().filter_map(|o| match layout::classify(&o.key) {
            Ok(BucketKey::Pointer { env, .. }) => Some((o.key, env)),
            _ => None,
        }))
        .map(|(key, env)| async move {
            let pointer = match read_small(&*self.store, &key, docs::MAX_DOC_BYTES).await {
                Ok(Some((b, _))) => docs::decode::<PointerDoc>(key.as_str(), &b).map_err(|e| e.to_string()),
                Ok(None) => Err("deleted while listing".to_owned()),
                Err(e) => return Err(Error::from(e)),
            };
            let image = match &pointer {
                Ok(doc) => match self.resolve_pointer_doc(app, &key, doc.clone()).await {
                    Ok(r) => Ok(r.record.image),
                    Err(e) if e.is_retryable() => return Err(e),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.clone()),
            };
            Ok(EnvEntry { env, key, pointer, image })
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
        let mut out = entries.into_iter().collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.env.cmp(&b.env));
        Ok(out)
    }

    /// Agent registrations of an app (and environment), unreadable ones as errors.
    pub async fn list_agents(
        &self,
        app: &AppName,
        env: Option<&EnvName>,
    ) -> Result<Vec<(ObjectKey, std::result::Result<AgentRegistration, String>)>> {
        let objects = list_all(&*self.store, &layout::agents_prefix(app, env)).await?;
        let mut out = Vec::new();
        for o in objects {
            if !matches!(layout::classify(&o.key), Ok(BucketKey::Agent { .. })) {
                continue;
            }
            let reg = match read_small(&*self.store, &o.key, docs::MAX_DOC_BYTES).await? {
                Some((b, _)) => docs::decode::<AgentRegistration>(o.key.as_str(), &b).map_err(|e| e.to_string()),
                None => continue,
            };
            out.push((o.key, reg));
        }
        Ok(out)
    }
}
