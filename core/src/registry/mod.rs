//! The registry operations: tag, promote, roll back, resolve, list, clean up, history.
//!
//! - this module: the registry itself, images and resolution;
//! - [`tags`](self::tags): semantic-version tags;
//! - [`pointers`](self::pointers): promote and rollback (compare-and-swap);
//! - [`listing`](self::listing): apps, images, tags, environments, agents;
//! - [`cleanup`](self::cleanup): deleting old unreferenced images, safely against promotions;
//! - [`history`](self::history): the audit trail.
//!
//! Write order is the invariant that keeps readers safe: image, then its metadata, then tags,
//! then pointers, so a reader that finds a pointer always finds what it points to. Tags are
//! created with `If-None-Match: *` and are immutable unless forced; pointers are updated with
//! compare-and-swap (`If-Match` on the ETag read) in a loop that re-reads and re-decides after
//! every lost race, and only on a store that passed the precondition probe.

mod cleanup;
mod history;
mod listing;
mod pointers;
mod tags;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use chrono::Duration;
use futures::StreamExt;

use crate::bucket::{self, Written, lease};
use crate::clock::{Backoff, Clock, new_write_id};
use crate::docs::{
    self, AgentRegistration, AuditRecord, CleanupDetails, EventType, ImageMetadata, PointerAction, PointerDoc,
    SCHEMA_VERSION, TagDoc, TargetType,
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

impl ImageRecord {
    /// The key tags and pointers name the image by: its archive key beside its metadata, the
    /// same whatever revision currently holds the bytes (and what the original tool wrote).
    pub fn archive_key_for_references(&self) -> ObjectKey {
        layout::archive_beside_metadata(&self.metadata_key).unwrap_or_else(|| self.archive_key.clone())
    }
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
    /// The image's archive as far as a listing can tell (the newest archive object).
    pub archive: Option<ObjectInfo>,
    pub metadata: Option<ObjectInfo>,
    /// Every archive object of the image: the current one, and leftovers of re-pushes or
    /// unfinished pushes.
    pub archives: Vec<ObjectInfo>,
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
    /// Images pushed more recently than this (seconds) were kept whatever their rank.
    pub grace_seconds: i64,
    pub apps: Vec<AppCleanup>,
}

/// How long after its push an image is safe from cleanup, by default.
pub const DEFAULT_CLEANUP_GRACE: Duration = Duration::hours(24);
/// How long an archive no metadata names (an unfinished push, or one a re-push replaced) is
/// left alone: a push uploads before it commits, and may take long.
pub const ORPHAN_GRACE: Duration = Duration::hours(24);

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
        let Some(meta_key) = bucket::find_metadata(&*self.store, image).await? else {
            return Err(Error::not_found(
                format!("image {image} is not in {}", self.store.url()),
                format!("push it first (s3dock push {image}), or check `s3dock list images {}`", image.app),
            ));
        };
        self.image_at(image, meta_key).await
    }

    /// The image whose metadata is at `metadata_key`, with the archive that metadata names.
    /// A reader that races a re-push or a deletion sees the metadata change under it: it reads
    /// again, and reports a missing image (not corruption) when the image went away.
    async fn image_at(&self, image: &ImageRef, metadata_key: ObjectKey) -> Result<ImageRecord> {
        for _ in 0..3 {
            let Some((metadata, meta_etag)) = self.read_doc::<ImageMetadata>(&metadata_key).await? else {
                return Err(Error::not_found(
                    format!("image {image} was deleted while it was being read"),
                    "run the command again",
                ));
            };
            if metadata.app_name != image.app.as_str() || metadata.image_tag != image.to_string() {
                return Err(Error::integrity(format!(
                    "{metadata_key} describes {} of app {}, not {image}; re-push {image}",
                    metadata.image_tag, metadata.app_name
                )));
            }
            let archive_key = bucket::archive_key(&metadata_key, &metadata)
                .ok_or_else(|| Error::integrity(format!("{metadata_key} is not a metadata key")))?;
            let info = self.store.head(&archive_key).await?;
            let matches = info
                .as_ref()
                .is_some_and(|i| metadata.archive_etag.as_deref().is_none_or(|e| i.etag == ETag(e.to_owned())));
            if let (true, Some(info)) = (matches, info) {
                return Ok(ImageRecord {
                    image: image.clone(),
                    metadata_key,
                    archive_key,
                    metadata,
                    archive_size: info.size,
                });
            }
            // The metadata changed meanwhile (a re-push committed, a cleanup deleted it): read again.
            let now = self.store.head(&metadata_key).await?;
            if now.as_ref().is_some_and(|n| n.etag == meta_etag) {
                return Err(Error::integrity(format!(
                    "{archive_key} is missing or is not the archive its metadata committed; re-push {image}"
                )));
            }
        }
        Err(Error::Conflict {
            message: format!("{image} kept changing while it was being read; run the command again"),
        })
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
        let image = bucket::resolve_doc(&*self.store, app, &doc).await?;
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
            ..Default::default()
        };
        let image = bucket::resolve_doc(&*self.store, app, &as_pointer).await?;
        let record = self.image(&image).await?;
        Ok(Resolved {
            record: record.clone(),
            chain: vec![key.to_string(), record.archive_key.to_string()],
            pointer: None,
            version: Some(version.canonical()),
        })
    }
}

#[cfg(test)]
mod tests;
