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

/// The S3 endpoint the test suites use (`S3DOCK_TEST_S3_ENDPOINT`: a LocalStack URL, or `aws`
/// for real AWS with `S3DOCK_TEST_BUCKET`). Unset: panics when `CI` is set (the suite must run
/// against the real emulator there), otherwise prints why the S3 part is skipped.
pub fn s3_test_endpoint() -> Option<String> {
    match std::env::var("S3DOCK_TEST_S3_ENDPOINT") {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_owned()),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("LocalStack is required in CI: run tests/run.sh");
            }
            eprintln!(
                "skipping S3 checks: S3DOCK_TEST_S3_ENDPOINT is not set; run `tests/services.sh localstack-start && eval \"$(tests/services.sh env)\"` first"
            );
            None
        }
    }
}

/// A store on a fresh bucket of the test endpoint (an emulator), or on a fresh prefix of
/// `S3DOCK_TEST_BUCKET` (real AWS). `None` when S3 tests are skipped.
pub async fn s3_test_store(name: &str) -> Option<crate::store::S3Store> {
    let endpoint = s3_test_endpoint()?;
    let unique: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(24)
        .collect::<String>()
        .trim_matches('-')
        .to_owned();
    let unique = format!("{unique}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (bucket, prefix, custom) = if endpoint.eq_ignore_ascii_case("aws") {
        let bucket = std::env::var("S3DOCK_TEST_BUCKET").expect("S3DOCK_TEST_S3_ENDPOINT=aws needs S3DOCK_TEST_BUCKET");
        (bucket, format!("s3dock-test/{unique}/"), None)
    } else {
        (format!("s3dock-test-{unique}"), String::new(), Some(endpoint))
    };
    if let Some(url) = &custom {
        create_test_bucket(url, &bucket).await;
    }
    let mut cfg =
        crate::store::S3Config::new(&bucket).expect("valid bucket").with_prefix(&prefix).expect("valid prefix");
    if let Some(url) = custom {
        cfg.endpoint = Some(url);
        cfg.path_style = true;
    }
    cfg.part_size = crate::store::s3::MIN_PART_SIZE;
    Some(crate::store::S3Store::connect(cfg).await.expect("connect to the test store"))
}

/// Creates `bucket` on an S3 emulator at `endpoint` (path style, region us-east-1).
pub async fn create_test_bucket(endpoint: &str, bucket: &str) {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let mut b = aws_sdk_s3::config::Builder::from(&sdk).endpoint_url(endpoint).force_path_style(true);
    if sdk.region().is_none() {
        b = b.region(aws_sdk_s3::config::Region::new("us-east-1"));
    }
    let client = aws_sdk_s3::Client::from_conf(b.build());
    if let Err(e) = client.create_bucket().bucket(bucket).send().await {
        panic!("cannot create the test bucket {bucket} at {endpoint}: {:?}", e.into_service_error());
    }
}
