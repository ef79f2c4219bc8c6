//! Helpers for tests across the workspace: seed a bucket the way a push would, record
//! notifications instead of sending them. Not used by production code paths.

use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::digest::digest_reader;
use crate::docs::{self, ImageMetadata, SCHEMA_VERSION};
use crate::events::{EventError, Notifier};
use crate::layout;
use crate::names::{ImageRef, ObjectKey};
use crate::store::{ObjectStore, Precondition, StoreError};

/// Writes `archive` and matching metadata for `image`, as a completed push would (archive
/// first, metadata last). Returns the metadata written.
pub async fn seed_image(
    store: &dyn ObjectStore,
    image: &ImageRef,
    archive: &[u8],
    created_at: DateTime<Utc>,
) -> Result<ImageMetadata, StoreError> {
    let d = digest_reader(archive).map_err(|e| StoreError::Io { context: "hashing".into(), source: e })?;
    let meta = ImageMetadata {
        schema_version: Some(SCHEMA_VERSION),
        checksum: d.md5,
        size: d.size,
        created_at,
        git_hash: format!("{}{}", image.tag.hash7(), "0".repeat(33)),
        git_time: image.tag.time_str(),
        image_tag: image.to_string(),
        app_name: image.app.to_string(),
        sha256: Some(d.sha256),
        image_id: Some(format!("sha256:{}", "ab".repeat(32))),
        platform: Some("linux/amd64".into()),
        pushed_by: Some("tester".into()),
        source: None,
        format: Some("docker-archive".into()),
        ..Default::default()
    };
    store
        .put_bytes(&layout::image_archive(&image.app, &image.tag), Bytes::copy_from_slice(archive), Precondition::None)
        .await?;
    store
        .put_bytes(
            &layout::image_metadata(&image.app, &image.tag),
            Bytes::from(docs::encode(&meta)),
            Precondition::None,
        )
        .await?;
    Ok(meta)
}

/// Writes raw bytes at a key (fixtures of hostile or legacy documents).
pub async fn put_raw(store: &dyn ObjectStore, key: &str, body: impl Into<Bytes>) -> Result<(), StoreError> {
    let key = ObjectKey::parse(key).map_err(|e| StoreError::Other { message: e.to_string(), retryable: false })?;
    store.put_bytes(&key, body.into(), Precondition::None).await.map(|_| ())
}

/// A notifier that records what it would send.
#[derive(Debug, Default)]
pub struct RecordingNotifier {
    pub sent: Mutex<Vec<(String, String)>>,
    /// Queue URLs containing this string are refused by `check_queue`.
    pub refuse_containing: Option<String>,
}

impl RecordingNotifier {
    pub fn messages(&self) -> Vec<(String, String)> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl Notifier for RecordingNotifier {
    fn check_queue(&self, queue_url: &str) -> Result<(), String> {
        match &self.refuse_containing {
            Some(s) if queue_url.contains(s.as_str()) => Err(format!("queue {queue_url} is not allowed")),
            _ => Ok(()),
        }
    }

    async fn send(&self, queue_url: &str, body: &str) -> Result<(), EventError> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).push((queue_url.to_owned(), body.to_owned()));
        Ok(())
    }
}
