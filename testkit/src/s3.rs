//! An S3 store on a real endpoint for tests: a fresh bucket per fixture on an emulator
//! (LocalStack, moto), a fresh prefix of `S3DOCK_TEST_BUCKET` on real AWS.
//!
//! - `S3DOCK_TEST_S3_ENDPOINT=http://127.0.0.1:PORT` (LocalStack, from `tests/services.sh env`):
//!   every store gets its own new bucket `s3dock-test-{name}-{random}`, since LocalStack has no reset.
//! - `S3DOCK_TEST_S3_ENDPOINT=aws`: real AWS with the ambient credentials; buckets cannot be
//!   created per test there, so every store gets a unique prefix in `S3DOCK_TEST_BUCKET`.
//! - `S3DOCK_TEST_MOTO_ENDPOINT` (from `tests/services.sh moto-start`) adds moto as an optional
//!   second target.

use s3dock_aws::s3::MIN_PART_SIZE;
use s3dock_aws::{S3Config, S3Store};

use crate::{DisplayErr, required_service, unique};

/// Part size of the S3 test stores: S3's minimum, so a 12 MiB body takes three parts.
pub const TEST_PART_SIZE: usize = MIN_PART_SIZE;
/// Keys per listing page of the S3 test stores, so a few dozen keys span several pages.
pub const TEST_LIST_PAGE: i32 = 7;

/// The S3 endpoint under test, `None` (with a message) when tests should skip S3; required
/// in CI.
pub fn s3_endpoint() -> Option<String> {
    required_service(
        "S3DOCK_TEST_S3_ENDPOINT",
        "LocalStack",
        "run `tests/services.sh localstack-start && eval \"$(tests/services.sh env)\"` first",
    )
}

/// The emulator endpoint (LocalStack) for tests that need SQS and S3 events beside S3, which
/// real AWS cannot give them per test: `None` (with a message) with `aws` or without one.
pub fn emulator_endpoint() -> Option<String> {
    match s3_endpoint()? {
        v if v.eq_ignore_ascii_case("aws") => {
            eprintln!("skipping: this test needs LocalStack, not AWS (S3DOCK_TEST_S3_ENDPOINT=aws)");
            None
        }
        v => Some(v),
    }
}

/// The moto endpoint, if moto runs (it is an optional second target, never required).
pub fn moto_endpoint() -> Option<String> {
    match std::env::var("S3DOCK_TEST_MOTO_ENDPOINT") {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_owned()),
        _ => {
            eprintln!("skipping moto checks: S3DOCK_TEST_MOTO_ENDPOINT is not set (tests/services.sh moto-start)");
            None
        }
    }
}

/// Where an S3 test store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Real AWS: the SDK's own endpoint resolution.
    Aws,
    /// An emulator at this URL, path-style.
    Custom(String),
}

impl Endpoint {
    pub fn parse(s: &str) -> Endpoint {
        if s.eq_ignore_ascii_case("aws") { Endpoint::Aws } else { Endpoint::Custom(s.to_owned()) }
    }
}

/// The configuration every S3 test store uses: small parts and listing pages so the multipart,
/// part-copy and pagination paths run with small objects.
pub fn test_config(endpoint: &Endpoint, bucket: &str, prefix: &str) -> S3Config {
    let mut cfg = S3Config::new(bucket).expect("valid test bucket name").with_prefix(prefix).expect("valid prefix");
    if let Endpoint::Custom(url) = endpoint {
        cfg.endpoint = Some(url.clone());
        cfg.path_style = true;
    }
    cfg.part_size = TEST_PART_SIZE;
    cfg.list_page_size = Some(TEST_LIST_PAGE);
    cfg.multipart_copy_threshold = MIN_PART_SIZE as u64;
    cfg
}

/// A raw SDK client for the endpoint, for what the store does not do (buckets, checks).
pub async fn sdk_client(endpoint: &Endpoint) -> aws_sdk_s3::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let mut b = aws_sdk_s3::config::Builder::from(&sdk);
    if sdk.region().is_none() {
        b = b.region(aws_sdk_s3::config::Region::new("us-east-1"));
    }
    if let Endpoint::Custom(url) = endpoint {
        b = b.endpoint_url(url).force_path_style(true);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

/// An S3 store on a fresh bucket (emulators) or a fresh prefix (AWS), with a raw client beside
/// it for checks the store cannot make.
pub struct S3Fixture {
    pub store: S3Store,
    pub client: aws_sdk_s3::Client,
    created_bucket: bool,
}

impl S3Fixture {
    pub async fn new(endpoint: Endpoint, name: &str, prefixed: bool) -> S3Fixture {
        let client = sdk_client(&endpoint).await;
        let (bucket, mut prefix, created_bucket) = match &endpoint {
            Endpoint::Aws => {
                let bucket = std::env::var("S3DOCK_TEST_BUCKET").unwrap_or_else(|_| {
                    panic!(
                        "S3DOCK_TEST_S3_ENDPOINT=aws needs S3DOCK_TEST_BUCKET=<a bucket these credentials may write>"
                    )
                });
                (bucket, format!("s3dock-test/{}/", unique(name)), false)
            }
            Endpoint::Custom(_) => {
                let bucket = format!("s3dock-test-{}", unique(name));
                create_bucket(&client, &endpoint, &bucket).await;
                (bucket, String::new(), true)
            }
        };
        if prefixed {
            // A space and a '+' in the prefix: both must survive URL encoding everywhere
            // (keys, copy sources, listing prefixes).
            prefix.push_str("team a/x+y/");
        }
        let store =
            S3Store::connect(test_config(&endpoint, &bucket, &prefix)).await.expect("connect to the test store");
        S3Fixture { store, client, created_bucket }
    }

    pub fn bucket(&self) -> &str {
        self.store.bucket()
    }

    /// Keys (store-relative) of multipart uploads still in progress under the store's prefix.
    pub async fn uploads_in_progress(&self) -> Vec<String> {
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(self.bucket())
            .prefix(self.store.prefix())
            .send()
            .await
            .unwrap_or_else(|e| panic!("ListMultipartUploads failed: {}", DisplayErr(&e)));
        out.uploads()
            .iter()
            .filter_map(|u| u.key())
            .map(|k| k.strip_prefix(self.store.prefix()).unwrap_or(k).to_owned())
            .collect()
    }

    /// Every raw key in the bucket (prefix included), following pages.
    pub async fn raw_keys(&self, under: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(self.bucket())
                .prefix(under)
                .set_continuation_token(token)
                .send()
                .await
                .unwrap_or_else(|e| panic!("ListObjectsV2 failed: {}", DisplayErr(&e)));
            keys.extend(out.contents().iter().filter_map(|o| o.key()).map(str::to_owned));
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return keys,
            }
        }
    }

    /// Writes a raw key (prefix included) directly, bypassing the store's key validation.
    pub async fn put_raw(&self, raw_key: &str, body: &'static [u8]) {
        self.client
            .put_object()
            .bucket(self.bucket())
            .key(raw_key)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(body))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutObject {raw_key} failed: {}", DisplayErr(&e)));
    }

    /// Removes what the test wrote (AWS: its prefix; emulators: the whole bucket). Best effort.
    pub async fn cleanup(self) {
        let prefix = self.store.prefix().to_owned();
        for key in self.raw_keys(&prefix).await {
            let _ = self.client.delete_object().bucket(self.bucket()).key(&key).send().await;
        }
        if let Ok(out) = self.client.list_multipart_uploads().bucket(self.bucket()).prefix(&prefix).send().await {
            for u in out.uploads() {
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(self.bucket())
                    .key(u.key().unwrap_or_default())
                    .upload_id(u.upload_id().unwrap_or_default())
                    .send()
                    .await;
            }
        }
        if self.created_bucket {
            let _ = self.client.delete_bucket().bucket(self.bucket()).send().await;
        }
    }
}

/// The S3 target from `S3DOCK_TEST_S3_ENDPOINT` (LocalStack or AWS), if configured.
pub async fn s3_fixture(name: &str, prefixed: bool) -> Option<S3Fixture> {
    let endpoint = Endpoint::parse(&s3_endpoint()?);
    Some(S3Fixture::new(endpoint, name, prefixed).await)
}

/// The moto target, if moto runs.
pub async fn moto_fixture(name: &str) -> Option<S3Fixture> {
    let endpoint = Endpoint::Custom(moto_endpoint()?);
    Some(S3Fixture::new(endpoint, name, false).await)
}

/// An S3 store on a fresh bucket, or `None` when S3 tests are skipped.
pub async fn s3_store(name: &str) -> Option<S3Store> {
    s3_fixture(name, false).await.map(|f| f.store)
}

/// Like [`s3_store`], with a key prefix (holding a space and a `+`).
pub async fn s3_store_prefixed(name: &str) -> Option<S3Store> {
    s3_fixture(name, true).await.map(|f| f.store)
}

/// Creates `bucket` on an S3 emulator at `endpoint` (path style, region us-east-1).
pub async fn create_test_bucket(endpoint: &str, bucket: &str) {
    let endpoint = Endpoint::Custom(endpoint.to_owned());
    create_bucket(&sdk_client(&endpoint).await, &endpoint, bucket).await;
}

async fn create_bucket(client: &aws_sdk_s3::Client, endpoint: &Endpoint, bucket: &str) {
    if let Err(e) = client.create_bucket().bucket(bucket).send().await {
        panic!("cannot create the test bucket {bucket} at {endpoint:?}: {}", DisplayErr(&e));
    }
}
