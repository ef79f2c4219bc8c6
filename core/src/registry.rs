//! The registry operations: tag, promote, roll back, resolve, list, clean up, history.
//!
//! Write order is the invariant that keeps readers safe: image, then its metadata, then tags,
//! then pointers, so a reader that finds a pointer always finds what it points to. Tags are
//! created with `If-None-Match: *` and are immutable unless forced; pointers are updated with
//! compare-and-swap (`If-Match` on the ETag read) in a loop that re-reads and re-decides after
//! every lost race, and only on a store that passed the precondition probe.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use chrono::Duration;
use futures::StreamExt;

use crate::clock::Clock;
use crate::docs::{
    self, AgentRegistration, AuditRecord, EventType, ImageMetadata, PointerAction, PointerDoc, SCHEMA_VERSION, TagDoc,
    TargetType,
};
use crate::error::{Error, Result};
use crate::events::{self, Handlers, ObjectEvent, Origin, Outcome};
use crate::layout::{self, BucketKey};
use crate::names::{AppName, EnvName, ImageRef, ObjectKey, Version};
use crate::store::{
    ETag, ObjectInfo, ObjectStore, Precondition, list_all, list_prefixes, probe_preconditions, read_small,
};

/// Who runs the event handlers after the registry's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventMode {
    /// In this process, right after each write (the default; no stack needed).
    #[default]
    Inline,
    /// The Lambda functions, from S3 events; the registry writes no audit itself.
    Lambda,
}

/// How many times a pointer update re-reads and retries after losing a race.
pub const MAX_CAS_ATTEMPTS: u32 = 200;

/// An image in the bucket with its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub image: ImageRef,
    pub metadata_key: ObjectKey,
    pub archive_key: ObjectKey,
    pub metadata: ImageMetadata,
    pub archive_size: u64,
}

/// What a pointer or version resolves to, and through what.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub record: ImageRecord,
    /// The keys followed, pointer first.
    pub chain: Vec<String>,
    pub pointer: Option<PointerDoc>,
    /// The version the chain went through, if any.
    pub version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug)]
pub struct TagOutcome {
    pub key: ObjectKey,
    pub image: ImageRef,
    pub version: Version,
    pub change: Change,
    /// For a forced move: what the tag pointed to before, and where the old file went.
    pub previous: Option<String>,
    pub archived_to: Option<ObjectKey>,
    /// The inline event's result (`None` with `events = "lambda"`).
    pub event: Option<std::result::Result<Outcome, events::EventError>>,
}

/// What `promote` and `rollback` promote.
#[derive(Debug, Clone)]
pub enum PromoteSource {
    /// Point the environment at this image directly.
    Image(ImageRef),
    /// Point the environment at the tag, so it follows the tag.
    Version(AppName, Version),
}

impl PromoteSource {
    pub fn app(&self) -> &AppName {
        match self {
            PromoteSource::Image(i) => &i.app,
            PromoteSource::Version(a, _) => a,
        }
    }
}

#[derive(Debug)]
pub struct PromoteOutcome {
    pub key: ObjectKey,
    pub env: EnvName,
    pub image: ImageRef,
    pub version: Option<String>,
    pub seq: u64,
    pub previous: Option<String>,
    pub change: Change,
    /// Tries needed (1 when no one else was writing).
    pub attempts: u32,
    pub event: Option<std::result::Result<Outcome, events::EventError>>,
}

#[derive(Debug, Clone)]
pub struct ImageEntry {
    pub image: ImageRef,
    pub month: String,
    pub archive: Option<ObjectInfo>,
    pub metadata: Option<ObjectInfo>,
}

impl ImageEntry {
    /// An archive with its metadata: a committed push.
    pub fn is_complete(&self) -> bool {
        self.archive.is_some() && self.metadata.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct TagEntry {
    pub version: Version,
    pub key: ObjectKey,
    pub doc: std::result::Result<TagDoc, String>,
    pub image: Option<ImageRef>,
}

#[derive(Debug, Clone)]
pub struct EnvEntry {
    pub env: EnvName,
    pub key: ObjectKey,
    pub pointer: std::result::Result<PointerDoc, String>,
    pub image: std::result::Result<ImageRef, String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CleanupItem {
    pub image: String,
    pub keys: Vec<String>,
    pub bytes: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AppCleanup {
    pub app: String,
    pub kept: Vec<CleanupItem>,
    pub deleted: Vec<CleanupItem>,
    /// Images spared at deletion time because a tag or pointer appeared meanwhile.
    pub spared: Vec<String>,
    pub freed_bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CleanupReport {
    pub dry_run: bool,
    pub keep: usize,
    pub apps: Vec<AppCleanup>,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub env: Option<EnvName>,
    /// Empty: every type.
    pub types: Vec<String>,
    pub limit: usize,
}

#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub key: ObjectKey,
    pub record: std::result::Result<AuditRecord, String>,
}

/// The registry over one store.
#[derive(Debug)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
    actor: String,
    handlers: Option<Handlers>,
    probed: tokio::sync::OnceCell<()>,
}

impl Registry {
    pub fn new(store: Arc<dyn ObjectStore>, clock: Arc<dyn Clock>, actor: impl Into<String>, mode: EventMode) -> Self {
        let actor = actor.into();
        let handlers = match mode {
            EventMode::Inline => Some(Handlers::new(store.clone(), clock.clone(), Origin::Cli, actor.clone())),
            EventMode::Lambda => None,
        };
        Registry { store, clock, actor, handlers, probed: tokio::sync::OnceCell::new() }
    }

    /// Lets inline promotions notify agent queues.
    pub fn with_notifier(mut self, notifier: Arc<dyn events::Notifier>) -> Self {
        self.handlers = self.handlers.map(|h| h.with_notifier(notifier));
        self
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The inline handlers, if events run in-process.
    pub fn handlers(&self) -> Option<&Handlers> {
        self.handlers.as_ref()
    }

    /// Refuses stores that ignore conditional writes; probes once per registry.
    pub async fn ensure_preconditions(&self) -> Result<()> {
        self.probed.get_or_try_init(|| async { probe_preconditions(&*self.store).await }).await?;
        Ok(())
    }

    async fn read_doc<T: docs::Document>(&self, key: &ObjectKey) -> Result<Option<(T, ETag)>> {
        match read_small(&*self.store, key, docs::MAX_DOC_BYTES).await? {
            None => Ok(None),
            Some((bytes, info)) => Ok(Some((docs::decode(key.as_str(), &bytes)?, info.etag))),
        }
    }

    // ---------------------------------------------------------------- images

    /// An image's metadata and keys; errors if it is not (completely) in the bucket.
    pub async fn image(&self, image: &ImageRef) -> Result<ImageRecord> {
        let Some(meta_key) = events::find_metadata(&*self.store, image).await? else {
            return Err(Error::not_found(
                format!("image {image} is not in {}", self.store.url()),
                format!("push it first (s3dock push {image}), or check `s3dock list images {}`", image.app),
            ));
        };
        self.image_at(image, meta_key).await
    }

    async fn image_at(&self, image: &ImageRef, metadata_key: ObjectKey) -> Result<ImageRecord> {
        let Some((metadata, _)) = self.read_doc::<ImageMetadata>(&metadata_key).await? else {
            return Err(Error::not_found(format!("{metadata_key} disappeared"), "run the command again"));
        };
        if metadata.app_name != image.app.as_str() || metadata.image_tag != image.to_string() {
            return Err(Error::integrity(format!(
                "{metadata_key} describes {} of app {}, not {image}; re-push {image}",
                metadata.image_tag, metadata.app_name
            )));
        }
        let archive_key = layout::archive_beside_metadata(&metadata_key)
            .ok_or_else(|| Error::integrity(format!("{metadata_key} is not a metadata key")))?;
        let Some(info) = self.store.head(&archive_key).await? else {
            return Err(Error::integrity(format!(
                "{archive_key} is missing although its metadata exists; re-push {image}"
            )));
        };
        Ok(ImageRecord { image: image.clone(), metadata_key, archive_key, metadata, archive_size: info.size })
    }

    // ---------------------------------------------------------------- tags

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
    /// move in the new one (so the audit shows it).
    pub async fn tag(&self, image: &ImageRef, version: &Version, force: bool) -> Result<TagOutcome> {
        let record = self.image(image).await?;
        let app = &image.app;
        let canonical = layout::tag(app, version);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let existing = self.read_tag(app, version).await?;
            let now = self.clock.now();
            let mut doc = TagDoc {
                schema_version: Some(SCHEMA_VERSION),
                target_type: TargetType::Image,
                target_path: record.archive_key.to_string(),
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
            };
            let (precondition, archived_to, previous, legacy_key) = match existing {
                None => (Precondition::IfAbsent, None, None, None),
                Some((key, old, etag)) => {
                    let old_image = events::target_image(app, &old.target_path).ok();
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
                    let dst = events::archive_copy(&*self.store, &key, |n| {
                        layout::archive(app, &month, &stem, now, n, layout::JSON_EXT)
                    })
                    .await?;
                    let prev = docs::PreviousTarget {
                        target_type: old.target_type,
                        target_path: old.target_path.clone(),
                        source_image: old.source_image.clone().or(Some(shown.clone())),
                        source_tag: None,
                        seq: None,
                    };
                    doc.previous = Some(prev);
                    doc.archived_to = Some(dst.to_string());
                    if key == canonical {
                        (Precondition::IfMatch(etag), Some(dst), Some(shown), None)
                    } else {
                        (Precondition::IfAbsent, Some(dst), Some(shown), Some(key))
                    }
                }
            };
            match self.store.put_bytes(&canonical, Bytes::from(docs::encode(&doc)), precondition).await {
                Ok(_) => {}
                Err(e) if e.is_precondition_failed() || e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            }
            if let Some(legacy) = legacy_key {
                // The canonical key now wins lookups; the archived legacy file can go.
                self.store.delete(&legacy).await?;
            }
            let change = if previous.is_some() { Change::Updated } else { Change::Created };
            let event = match &self.handlers {
                Some(h) => Some(h.record_tag(app, version, &canonical, &ObjectEvent::inline(canonical.clone())).await),
                None => None,
            };
            return Ok(TagOutcome {
                key: canonical,
                image: image.clone(),
                version: version.clone(),
                change,
                previous,
                archived_to,
                event,
            });
        }
        Err(Error::Conflict { message: format!("{canonical} kept changing under concurrent writers; try again") })
    }

    // ---------------------------------------------------------------- pointers

    /// Resolves the environment's pointer to an image that exists.
    pub async fn resolve(&self, app: &AppName, env: &EnvName) -> Result<Resolved> {
        let key = layout::pointer(app, env);
        let Some((doc, _)) = self.read_doc::<PointerDoc>(&key).await? else {
            return Err(Error::not_found(
                format!("{app} has no pointer for environment {env} ({key})"),
                format!("promote an image first: s3dock promote {app}:TAG {env}"),
            ));
        };
        self.resolve_pointer_doc(app, &key, doc).await
    }

    async fn resolve_pointer_doc(&self, app: &AppName, key: &ObjectKey, doc: PointerDoc) -> Result<Resolved> {
        let image = events::resolve_doc(&*self.store, app, &doc).await?;
        let record = self.image(&image).await.map_err(|e| match e {
            Error::NotFound { what, .. } => Error::not_found(
                format!("{key} points to {image}, but {what}"),
                "promote an image that exists, or re-push it",
            ),
            other => other,
        })?;
        let mut chain = vec![key.to_string()];
        if doc.target_type == TargetType::Tag {
            chain.push(doc.target_path.clone());
        }
        chain.push(record.archive_key.to_string());
        let version = if doc.target_type == TargetType::Tag { doc.source_tag.clone() } else { None };
        Ok(Resolved { record, chain, pointer: Some(doc), version })
    }

    /// Resolves a version to an image that exists.
    pub async fn resolve_version(&self, app: &AppName, version: &Version) -> Result<Resolved> {
        let Some((key, doc, _)) = self.read_tag(app, version).await? else {
            return Err(Error::not_found(
                format!("{app} has no tag {}", version.canonical()),
                format!("tag an image first: s3dock tag {app}:TAG {}", version.canonical()),
            ));
        };
        let as_pointer = PointerDoc {
            schema_version: None,
            target_type: TargetType::Tag,
            target_path: key.to_string(),
            promoted_at: doc.promoted_at,
            promoted_by: doc.promoted_by.clone(),
            git_hash: doc.git_hash.clone(),
            git_time: doc.git_time.clone(),
            source_image: doc.source_image.clone(),
            source_tag: Some(version.canonical()),
            seq: None,
            previous: None,
            action: None,
        };
        let image = events::resolve_doc(&*self.store, app, &as_pointer).await?;
        let record = self.image(&image).await?;
        Ok(Resolved {
            record: record.clone(),
            chain: vec![key.to_string(), record.archive_key.to_string()],
            pointer: None,
            version: Some(version.canonical()),
        })
    }

    /// Points `env` at `source` with compare-and-swap. Promoting what is already current is a
    /// no-op. Each lost race re-reads the pointer and decides again.
    pub async fn promote(&self, source: &PromoteSource, env: &EnvName) -> Result<PromoteOutcome> {
        let app = source.app().clone();
        // Validate the target before touching the pointer: it must exist and resolve.
        let (target_type, target_path, image, record, version) = match source {
            PromoteSource::Image(image) => {
                let record = self.image(image).await?;
                (TargetType::Image, record.archive_key.to_string(), image.clone(), record, None)
            }
            PromoteSource::Version(app, version) => {
                let resolved = self.resolve_version(app, version).await?;
                let tag_key = resolved.chain[0].clone();
                (TargetType::Tag, tag_key, resolved.record.image.clone(), resolved.record, Some(version.canonical()))
            }
        };
        self.ensure_preconditions().await?;
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
                    seq: None,
                    previous: None,
                    action: Some(PointerAction::Promote),
                })
            },
            &image,
            version.clone(),
        )
        .await
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
            git_hash: String::new(),
            git_time: String::new(),
            source_image: prev.source_image.clone(),
            source_tag: prev.source_tag.clone(),
            seq: None,
            previous: None,
            action: Some(PointerAction::Rollback),
        };
        let image = events::resolve_doc(&*self.store, app, &as_doc).await?;
        let record = self.image(&image).await?;
        self.ensure_preconditions().await?;
        let etag_seen = etag.clone();
        let version = if prev.target_type == TargetType::Tag { prev.source_tag.clone() } else { None };
        self.write_pointer(app, env, |now_current| {
            if now_current.map(|(_, e)| e) != Some(&etag_seen) {
                return Err(Error::Conflict {
                    message: format!("{key} changed while rolling back; check `s3dock current {app} {env}` and run rollback again if still wanted"),
                });
            }
            let mut doc = as_doc.clone();
            doc.git_hash = record.metadata.git_hash.clone();
            doc.git_time = record.metadata.git_time.clone();
            doc.source_image = Some(image.to_string());
            Ok(doc)
        }, &image, version)
        .await
    }

    /// The compare-and-swap loop shared by promote and rollback. `make` builds the new document
    /// from the current one (seq and previous are filled in here).
    async fn write_pointer(
        &self,
        app: &AppName,
        env: &EnvName,
        make: impl Fn(Option<(&PointerDoc, &ETag)>) -> Result<PointerDoc>,
        image: &ImageRef,
        version: Option<String>,
    ) -> Result<PromoteOutcome> {
        let key = layout::pointer(app, env);
        for attempt in 1..=MAX_CAS_ATTEMPTS {
            let current = self.read_doc::<PointerDoc>(&key).await?;
            let mut doc = make(current.as_ref().map(|(d, e)| (d, e)))?;
            let (precondition, previous) = match &current {
                None => (Precondition::IfAbsent, None),
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
                    (Precondition::IfMatch(etag.clone()), Some(cur.as_previous()))
                }
            };
            let seq = current.as_ref().map(|(c, _)| c.seq() + 1).unwrap_or(1);
            doc.seq = Some(seq);
            doc.previous = previous.clone();
            match self.store.put_bytes(&key, Bytes::from(docs::encode(&doc)), precondition).await {
                Ok(_) => {
                    let event = match &self.handlers {
                        Some(h) => Some(
                            h.fan_out_promotion(app, env, &key, &ObjectEvent::inline(key.clone()), Some(&doc)).await,
                        ),
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
                Err(e) if e.is_precondition_failed() || e.is_not_found() => {
                    // Lost a race: back off with jitter so contenders spread out, then re-read.
                    let jitter = (uuid::Uuid::new_v4().as_u128() % 20) as u64;
                    let base = 2u64.saturating_pow(attempt.min(6)).min(50);
                    tokio::time::sleep(std::time::Duration::from_millis(base + jitter)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict {
            message: format!("{key} kept changing under concurrent writers ({MAX_CAS_ATTEMPTS} attempts); try again"),
        })
    }

    // ---------------------------------------------------------------- listing

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
                Ok(BucketKey::ImageArchive { app: a, month, tag }) if &a == app => (ImageRef::new(a, tag), month, true),
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
            });
            if is_archive {
                e.archive = Some(obj);
            } else {
                e.metadata = Some(obj);
            }
        }
        let mut out: Vec<ImageEntry> = by_image.into_values().collect();
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
            let image = doc.as_ref().ok().and_then(|d| events::target_image(app, &d.target_path).ok());
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

    // ---------------------------------------------------------------- cleanup

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
            if let Ok(image) = events::resolve_doc(&*self.store, app, &doc).await {
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
                if let Ok(image) = events::resolve_doc(&*self.store, app, &as_doc).await {
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

    /// Keeps the newest `keep` images of each app plus everything referenced; with `dry_run`
    /// only reports. Pushes that never committed (an archive without metadata) older than a
    /// day are removed too. Never touches `archive/` or `audit/`.
    pub async fn cleanup(&self, app: Option<&AppName>, keep: usize, dry_run: bool) -> Result<CleanupReport> {
        let apps = match app {
            Some(a) => vec![a.clone()],
            None => self.list_apps().await?,
        };
        let mut report = CleanupReport { dry_run, keep, apps: Vec::new() };
        let stale_after = Duration::hours(24);
        for app in apps {
            let protected = self.protected_images(&app).await?;
            let images = self.list_images(&app, None).await?;
            let mut out = AppCleanup { app: app.to_string(), ..Default::default() };
            let mut newest = 0usize;
            let now = self.clock.now();
            let mut doomed: Vec<(ImageEntry, CleanupItem)> = Vec::new();
            for e in images {
                let keys: Vec<String> = e.metadata.iter().chain(e.archive.iter()).map(|o| o.key.to_string()).collect();
                let bytes =
                    e.archive.as_ref().map(|a| a.size).unwrap_or(0) + e.metadata.as_ref().map(|m| m.size).unwrap_or(0);
                let item =
                    |reason: String| CleanupItem { image: e.image.to_string(), keys: keys.clone(), bytes, reason };
                if e.is_complete() {
                    if let Some(why) = protected.get(&e.image) {
                        out.kept.push(item(format!("referenced: {why}")));
                    } else if newest < keep {
                        newest += 1;
                        out.kept.push(item(format!("among the newest {keep}")));
                    } else {
                        doomed.push((e.clone(), item(format!("older than the newest {keep}, not referenced"))));
                    }
                } else if e.metadata.is_none() {
                    let old = e.archive.as_ref().and_then(|a| a.last_modified).is_some_and(|t| now - t > stale_after);
                    if old && !protected.contains_key(&e.image) {
                        doomed.push((e.clone(), item("incomplete push (no metadata) older than a day".into())));
                    } else {
                        out.kept.push(item("incomplete push, possibly still uploading".into()));
                    }
                } else {
                    out.kept.push(item("metadata without archive: left for inspection".into()));
                }
            }
            if !dry_run && !doomed.is_empty() {
                // Re-read references right before deleting: a tag or promotion made since the
                // plan was drawn spares its image.
                let protected_now = self.protected_images(&app).await?;
                for (e, item) in doomed {
                    if protected_now.contains_key(&e.image) {
                        out.spared.push(e.image.to_string());
                        continue;
                    }
                    // Metadata first: it is the commit marker, so no reader ever finds
                    // metadata whose archive is gone.
                    if let Some(m) = &e.metadata {
                        self.store.delete(&m.key).await?;
                    }
                    if let Some(a) = &e.archive {
                        self.store.delete(&a.key).await?;
                    }
                    out.freed_bytes += item.bytes;
                    out.deleted.push(item);
                }
                if !out.deleted.is_empty() && self.handlers.is_some() {
                    self.audit_cleanup(&app, &out).await?;
                }
            } else {
                out.freed_bytes = doomed.iter().map(|(_, i)| i.bytes).sum();
                out.deleted = doomed.into_iter().map(|(_, i)| i).collect();
            }
            report.apps.push(out);
        }
        Ok(report)
    }

    async fn audit_cleanup(&self, app: &AppName, out: &AppCleanup) -> Result<()> {
        let now = self.clock.now();
        let rec = AuditRecord {
            schema_version: Some(SCHEMA_VERSION),
            event_type: EventType::Cleanup.as_str().into(),
            timestamp: now,
            user: self.actor.clone(),
            app_name: app.to_string(),
            git_hash: String::new(),
            git_time: String::new(),
            details: serde_json::json!({
                "deleted": out.deleted.iter().map(|d| &d.image).collect::<Vec<_>>(),
                "keys": out.deleted.iter().flat_map(|d| d.keys.iter()).collect::<Vec<_>>(),
                "freed_bytes": out.freed_bytes,
            }),
            principal: None,
            recorded_by: Some("cli".into()),
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let key = layout::audit(app, now, EventType::Cleanup.as_str(), "all", &[&id[..8]]);
        events::write_audit(&*self.store, &key, &rec).await?;
        Ok(())
    }

    // ---------------------------------------------------------------- history

    /// The audit trail of an app, newest first, filtered by environment and event type.
    pub async fn history(&self, app: &AppName, q: &HistoryQuery) -> Result<Vec<HistoryEntry>> {
        let mut months = list_prefixes(&*self.store, &layout::audit_prefix(app)).await?;
        months.sort_by(|a, b| b.cmp(a));
        let limit = if q.limit == 0 { usize::MAX } else { q.limit };
        let mut out: Vec<HistoryEntry> = Vec::new();
        for month in months {
            let objects = list_all(&*self.store, &month).await?;
            let mut entries = futures::stream::iter(objects)
                .map(|o| async move {
                    let rec = match read_small(&*self.store, &o.key, docs::MAX_DOC_BYTES).await {
                        Ok(Some((b, _))) => docs::decode::<AuditRecord>(o.key.as_str(), &b).map_err(|e| e.to_string()),
                        Ok(None) => Err("deleted while listing".into()),
                        Err(e) => return Err(Error::from(e)),
                    };
                    Ok(HistoryEntry { key: o.key, record: rec })
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            entries.retain(|e| match &e.record {
                Ok(r) => {
                    (q.types.is_empty() || q.types.iter().any(|t| t == &r.event_type))
                        && q.env.as_ref().is_none_or(|env| r.environment() == Some(env.as_str()))
                }
                // Unreadable records are shown unless a filter asks for something specific.
                Err(_) => q.types.is_empty() && q.env.is_none(),
            });
            entries.sort_by(|a, b| {
                let ta = a.record.as_ref().map(|r| r.timestamp).ok();
                let tb = b.record.as_ref().map(|r| r.timestamp).ok();
                tb.cmp(&ta).then_with(|| b.key.cmp(&a.key))
            });
            out.extend(entries);
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        Ok(out)
    }

    /// Writes an audit record directly (deploys, cleanup), never overwriting one.
    pub async fn audit(&self, key: &ObjectKey, record: &AuditRecord) -> Result<bool> {
        Ok(events::write_audit(&*self.store, key, record).await?)
    }

    /// The archive folder listing of an app (for `list` and tests).
    pub async fn list_archive(&self, app: &AppName) -> Result<Vec<ObjectInfo>> {
        Ok(list_all(&*self.store, &layout::archive_prefix(app)).await?)
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
