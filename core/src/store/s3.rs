//! The S3 store: any S3 endpoint (AWS, LocalStack, moto, MinIO...) through aws-sdk-s3.
//!
//! - Keys are stored under the configured prefix (`s3://bucket/prefix` holds `prefix/images/...`);
//!   the prefix is added on the way in and stripped from listings on the way out.
//! - Conditional writes map onto S3's own: `IfAbsent` is `If-None-Match: *`, `IfMatch` is
//!   `If-Match: <etag>`, sent on PutObject and on CompleteMultipartUpload (the moment a multipart
//!   object becomes visible), so the check and the write are one atomic step on the server.
//! - Large bodies go up as multipart uploads with a bounded number of parts in flight, so memory
//!   stays near `part_size * (concurrency + 1)` whatever the object size. Every failure path
//!   aborts the upload: S3 would otherwise keep (and bill) the parts of an upload nobody
//!   completes.
//! - Each request is retried by the SDK's standard retry policy (bounded attempts, exponential
//!   backoff with jitter) for connection errors, timeouts, throttling and 5xx. Part bodies are
//!   in-memory `Bytes`, so a retried part resends exactly the same bytes.
//! - Every SDK error goes through [`ErrCtx::map`], the one place that decides which
//!   [`StoreError`] a failure is and what the message tells the user to do.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    ProvideCredentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, SharedCredentialsProvider,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::retries::ErrorKind as RetryErrorKind;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

use super::*;

mod bucket;
mod compose;
pub use bucket::Versioning;

const MIB: usize = 1024 * 1024;
const GIB: u64 = 1024 * 1024 * 1024;

/// S3's smallest allowed part (all parts but the last).
pub const MIN_PART_SIZE: usize = 5 * MIB;
/// S3's largest allowed part.
pub const MAX_PART_SIZE: usize = 5 * 1024 * MIB;
/// S3's limit on the number of parts of one multipart upload.
pub const MAX_PARTS: u64 = 10_000;
/// The largest object CopyObject accepts; larger ones are copied part by part.
pub const MAX_SINGLE_COPY: u64 = 5 * GIB;
/// The user-metadata key (`x-amz-meta-s3dock-write-id`) that carries [`PutOptions::write_id`].
const WRITE_ID_META: &str = "s3dock-write-id";
/// The region used when neither the configuration nor the AWS chain names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Where and how to reach an S3 bucket. Holds no secrets: credentials always come from the AWS
/// chain (environment, profile, IMDS...), and [`S3Config::validate`] refuses an endpoint URL
/// with embedded credentials, so the derived `Debug` is safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket: `""` or `"a/b/"` (no leading slash, one trailing slash).
    pub prefix: String,
    /// `None`: the AWS chain's region (`AWS_REGION`, the profile...), else [`DEFAULT_REGION`].
    pub region: Option<String>,
    /// A custom endpoint (`http://127.0.0.1:4566`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most emulators need.
    pub path_style: bool,
    /// An AWS profile to take credentials and region from instead of the default chain.
    pub aws_profile: Option<String>,
    /// Multipart part size in bytes, at least [`MIN_PART_SIZE`]. Bodies smaller than one part go
    /// up in a single PutObject. A size hint above `part_size` x 10,000 raises it for that upload
    /// (S3 allows at most 10,000 parts).
    pub part_size: usize,
    /// Parts uploaded (or copied) at the same time.
    pub concurrency: usize,
    /// Attempts per request, the first included (the SDK's standard retry policy).
    pub max_attempts: u32,
    /// Time allowed to open a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed for one HTTP request to be sent and its response headers to arrive. It covers
    /// sending a whole part, so it must exceed `part_size` / the slowest expected uplink. Stalled
    /// body streams (either direction) are caught separately by the SDK's stalled-stream
    /// protection, so a multi-GB download is not bounded by this.
    pub read_timeout: Duration,
    /// Time allowed for one operation, retries included (not the streaming of a GET body).
    pub operation_timeout: Duration,
    /// Keys per ListObjectsV2 page (1-1000); `None` for the server's default (1000). Tests lower
    /// it to exercise pagination with few keys.
    pub list_page_size: Option<i32>,
    /// Objects larger than this are copied with UploadPartCopy instead of CopyObject. S3 refuses
    /// CopyObject above [`MAX_SINGLE_COPY`], the default; tests lower it to exercise the path.
    pub multipart_copy_threshold: u64,
}

impl S3Config {
    /// A configuration for `bucket` with the defaults (no prefix, AWS endpoint, 16 MiB parts,
    /// 4 in flight, 4 attempts, 3 s connect timeout).
    pub fn new(bucket: &str) -> Result<Self, StoreError> {
        validate_bucket(bucket)?;
        Ok(S3Config {
            bucket: bucket.to_owned(),
            prefix: String::new(),
            region: None,
            endpoint: None,
            path_style: false,
            aws_profile: None,
            part_size: 16 * MIB,
            concurrency: 4,
            max_attempts: 4,
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(300),
            operation_timeout: Duration::from_secs(30 * 60),
            list_page_size: None,
            multipart_copy_threshold: MAX_SINGLE_COPY,
        })
    }

    /// Parses `s3://bucket[/prefix]` (a trailing `/` is optional).
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| {
            config_error(format!(
                "invalid S3 store URL {url:?}: {reason}; use s3://BUCKET[/PREFIX], e.g. s3://my-images or s3://my-images/team-a"
            ))
        };
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("it does not start with s3://"))?;
        if rest.contains(['?', '#']) {
            return Err(bad("it has a query or fragment"));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket name is missing"));
        }
        S3Config::new(bucket)?.with_prefix(prefix)
    }

    /// Sets the key prefix, normalized to `""` or `"a/b/"`.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self, StoreError> {
        self.prefix = normalize_prefix(prefix)?;
        Ok(self)
    }

    /// The store's URL, `s3://bucket` or `s3://bucket/prefix`; [`S3Config::from_url`] parses it
    /// back to the same bucket and prefix.
    pub fn url(&self) -> String {
        match self.prefix.strip_suffix('/') {
            Some(p) if !p.is_empty() => format!("s3://{}/{p}", self.bucket),
            _ => format!("s3://{}", self.bucket),
        }
    }

    /// Checks every field (they are public, so a caller may have set anything) and returns the
    /// configuration with its prefix normalized.
    pub fn validate(&self) -> Result<S3Config, StoreError> {
        validate_bucket(&self.bucket)?;
        let mut cfg = self.clone();
        cfg.prefix = normalize_prefix(&self.prefix)?;
        if let Some(ep) = &cfg.endpoint {
            validate_endpoint(ep)?;
        }
        if let Some(r) = &cfg.region
            && (r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(config_error(format!("invalid S3 region {r:?}; use a region name such as us-east-1")));
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&cfg.part_size) {
            return Err(config_error(format!(
                "part size {} bytes is outside S3's limits; use between 5 MiB ({MIN_PART_SIZE}) and 5 GiB",
                cfg.part_size
            )));
        }
        if !(1..=64).contains(&cfg.concurrency) {
            return Err(config_error(format!(
                "concurrency {} is out of range; use 1 to 64 parts in flight",
                cfg.concurrency
            )));
        }
        if cfg.max_attempts == 0 {
            return Err(config_error("max_attempts must be at least 1 (the first attempt counts)".into()));
        }
        if let Some(n) = cfg.list_page_size
            && !(1..=1000).contains(&n)
        {
            return Err(config_error(format!("list page size {n} is out of range; use 1 to 1000")));
        }
        if !(MIN_PART_SIZE as u64..=MAX_SINGLE_COPY).contains(&cfg.multipart_copy_threshold) {
            return Err(config_error(format!(
                "multipart copy threshold {} is out of range; use 5 MiB to 5 GiB",
                cfg.multipart_copy_threshold
            )));
        }
        if cfg.connect_timeout.is_zero() || cfg.read_timeout.is_zero() || cfg.operation_timeout.is_zero() {
            return Err(config_error("S3 timeouts must be greater than zero".into()));
        }
        Ok(cfg)
    }
}

fn config_error(message: String) -> StoreError {
    StoreError::Other { message, retryable: false }
}

/// S3's bucket naming rules (general purpose buckets).
fn validate_bucket(name: &str) -> Result<(), StoreError> {
    let bad = |reason: String| {
        Err(config_error(format!(
            "invalid S3 bucket name {name:?}: {reason}; bucket names are 3-63 characters of lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
        )))
    };
    if name.len() < 3 || name.len() > 63 {
        return bad(format!("it is {} characters long", name.chars().count()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'))) {
        return bad(format!("it contains {c:?}"));
    }
    let first = name.as_bytes()[0];
    let last = name.as_bytes()[name.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return bad("it must start and end with a letter or digit".into());
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return bad("it has '.' next to '.' or '-'".into());
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return bad("it is formatted as an IP address".into());
    }
    Ok(())
}

/// `""`, `"/"` -> `""`; `"a/b"`, `"/a/b/"` -> `"a/b/"`. Every segment must be a valid key
/// segment, so prefix + key is always a valid key.
fn normalize_prefix(prefix: &str) -> Result<String, StoreError> {
    let trimmed = prefix.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    ObjectKey::parse(trimmed).map_err(|e| {
        config_error(format!("invalid S3 key prefix {prefix:?}: {e}; use folder names joined by '/', e.g. team-a/prod"))
    })?;
    Ok(format!("{trimmed}/"))
}

fn validate_endpoint(ep: &str) -> Result<(), StoreError> {
    let bad = |reason: &str| {
        Err(config_error(format!(
            "invalid S3 endpoint {:?}: {reason}; use http(s)://HOST[:PORT], e.g. http://127.0.0.1:4566",
            redact_userinfo(ep)
        )))
    };
    let rest = match ep.strip_prefix("https://").or_else(|| ep.strip_prefix("http://")) {
        Some(r) => r,
        None => return bad("it does not start with http:// or https://"),
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return bad("the host is missing");
    }
    if authority.contains('@') {
        return bad("it embeds credentials; put them in the environment or an AWS profile instead");
    }
    if ep.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains whitespace");
    }
    Ok(())
}

/// An endpoint for messages with any `user:password@` removed.
fn redact_userinfo(ep: &str) -> String {
    match ep.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map(|(a, p)| (a, Some(p))).unwrap_or((rest, None));
            let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
            match path {
                Some(p) => format!("{scheme}://{host}/{p}"),
                None => format!("{scheme}://{host}"),
            }
        }
        None => ep.rsplit_once('@').map(|(_, h)| h.to_owned()).unwrap_or_else(|| ep.to_owned()),
    }
}

/// A store on one S3 bucket (and prefix).
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    cfg: Arc<S3Config>,
    ctx: ErrCtx,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("url", &self.ctx.url).field("endpoint", &self.ctx.endpoint).finish()
    }
}

impl S3Store {
    /// Builds a client from the configuration and the AWS chain. No request is sent: an
    /// unreachable endpoint or missing credentials show up, mapped, on the first operation.
    pub async fn connect(cfg: S3Config) -> Result<S3Store, StoreError> {
        let cfg = cfg.validate()?;
        let sdk = crate::aws::sdk_config(crate::aws::ClientSettings {
            max_attempts: cfg.max_attempts,
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            operation_timeout: cfg.operation_timeout,
            aws_profile: cfg.aws_profile.as_deref(),
            region: cfg.region.as_deref(),
        })
        .await;
        let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| DEFAULT_REGION.to_owned());
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk)
            .region(Region::new(region.clone()))
            .force_path_style(cfg.path_style)
            // Checksums only where S3 requires them: the new "when supported" default sends
            // aws-chunked trailers and per-part CRCs that several S3-compatible servers reject
            // (LocalStack answers InvalidPart when part checksums appear at completion without an
            // algorithm chosen at creation), and response validation would need a checksum mode
            // those servers do not all implement. Integrity is checked end to end by s3dock
            // (MD5 and SHA-256 in the metadata), not per request.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(ep) = &cfg.endpoint {
            builder = builder.endpoint_url(ep);
        }
        let endpoint = cfg
            .endpoint
            .clone()
            .or_else(|| sdk.endpoint_url().map(str::to_owned))
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let ctx = ErrCtx { url: cfg.url(), bucket: cfg.bucket.clone(), endpoint: redact_userinfo(&endpoint) };
        Ok(S3Store { client: Client::from_conf(builder.build()), cfg: Arc::new(cfg), ctx })
    }

    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    pub fn bucket(&self) -> &str {
        &self.cfg.bucket
    }

    /// The key prefix, `""` or `"a/b/"`.
    pub fn prefix(&self) -> &str {
        &self.cfg.prefix
    }

    /// The endpoint requests go to, as shown in messages.
    pub fn endpoint(&self) -> &str {
        &self.ctx.endpoint
    }

    fn full_key(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.cfg.prefix, key.as_str())
    }

    fn apply_put_precondition(
        req: aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
        p: &Precondition,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        match p {
            Precondition::None => req,
            Precondition::IfAbsent => req.if_none_match("*"),
            Precondition::IfMatch(etag) => req.if_match(&etag.0),
        }
    }

    /// One PutObject, storing `write_id` with the object.
    async fn put_object(
        &self,
        key: &ObjectKey,
        body: Bytes,
        precondition: Precondition,
        write_id: Option<&str>,
    ) -> Result<ObjectInfo, StoreError> {
        let size = body.len() as u64;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(self.full_key(key))
            .content_length(size as i64)
            .body(ByteStream::from(body));
        if let Some(id) = write_id {
            req = req.metadata(WRITE_ID_META, id);
        }
        // If an attempt's response is lost after S3 applied a conditional write, the SDK's retry
        // fails that very condition (412): the caller sees PreconditionFailed, re-reads and
        // recognizes its own write by its write id (in the document, or `head`'s `write_id`).
        let out = Self::apply_put_precondition(req, &precondition)
            .send()
            .await
            .map_err(|e| self.ctx.map("writing", key.as_str(), e))?;
        let mut info = ObjectInfo::new(key.clone(), size, etag_or_err(out.e_tag(), &self.ctx, key)?);
        info.version_id = out.version_id().map(str::to_owned);
        info.write_id = write_id.map(str::to_owned);
        Ok(info)
    }

    /// Starts a multipart upload to `key`, storing `write_id` with the object.
    async fn start_upload(&self, key: &ObjectKey, write_id: Option<&str>) -> Result<Upload, StoreError> {
        let full = self.full_key(key);
        let mut req = self.client.create_multipart_upload().bucket(&self.cfg.bucket).key(&full);
        if let Some(id) = write_id {
            req = req.metadata(WRITE_ID_META, id);
        }
        let created = req.send().await.map_err(|e| self.ctx.map("starting a multipart upload to", key.as_str(), e))?;
        let id = created
            .upload_id()
            .ok_or_else(|| self.ctx.protocol("CreateMultipartUpload returned no upload id", key))?
            .to_owned();
        tracing::debug!(key = %key, upload_id = id, "multipart upload started");
        Ok(Upload {
            client: self.client.clone(),
            ctx: self.ctx.clone(),
            bucket: self.cfg.bucket.clone(),
            full,
            key: key.clone(),
            id,
        })
    }

    /// The multipart path of `put_stream`: `first` is the first part, already read and full.
    async fn put_multipart(
        &self,
        key: &ObjectKey,
        first: Bytes,
        body: BoxReader,
        opts: PutOptions,
        part_size: usize,
    ) -> Result<ObjectInfo, StoreError> {
        let upload = self.start_upload(key, opts.write_id.as_deref()).await?;
        let result = async {
            let (parts, size) = self.upload_parts(&upload, first, body, part_size).await?;
            if let Some(check) = opts.commit_check {
                check().await.map_err(|reason| StoreError::Aborted { key: key.to_string(), reason })?;
            }
            let etag = upload.complete(parts, &opts.precondition).await?;
            tracing::debug!(key = %key, size, "multipart upload completed");
            let mut info = ObjectInfo::new(key.clone(), size, etag);
            info.write_id = opts.write_id.clone();
            Ok(info)
        }
        .await;
        // Whatever failed (the body, a part, the commit check, the precondition), nothing may
        // stay behind: S3 keeps the parts of an uncompleted upload, invisible but billed.
        if let Err(e) = &result {
            tracing::debug!(key = %key, error = %e, "multipart upload failed; aborting it");
            upload.abort().await;
        }
        result
    }

    /// Uploads `first` and the rest of `body` in parts; the parts in order and the total size.
    async fn upload_parts(
        &self,
        upload: &Upload,
        first: Bytes,
        mut body: BoxReader,
        part_size: usize,
    ) -> Result<(Vec<CompletedPart>, u64), StoreError> {
        let key = &upload.key;
        let mut tasks: JoinSet<Result<CompletedPart, StoreError>> = JoinSet::new();
        let mut parts = Vec::new();
        let mut total: u64 = 0;
        let mut number: i32 = 0;
        let mut pending = Some(first);
        let mut more = true;
        let outcome = async {
            // At most `concurrency` parts upload while the next one is read, so memory stays near
            // part_size * (concurrency + 1) whatever the object size. Parts upload in tasks, so
            // they progress while this loop waits on the body.
            loop {
                if pending.is_none() && more {
                    let data = read_part(&mut body, part_size, part_size)
                        .await
                        .map_err(|e| StoreError::io(format!("reading the body for {key}"), e))?;
                    more = data.len() == part_size;
                    if !data.is_empty() {
                        pending = Some(data);
                    }
                }
                if tasks.len() < self.cfg.concurrency
                    && let Some(data) = pending.take()
                {
                    number += 1;
                    if number as u64 > MAX_PARTS {
                        return Err(config_error(format!(
                            "{key} is larger than {} bytes ({MAX_PARTS} parts of {part_size}); pass its size as a hint or raise part_size",
                            MAX_PARTS * part_size as u64
                        )));
                    }
                    total += data.len() as u64;
                    tasks.spawn(upload.clone().part(number, data));
                    continue;
                }
                match tasks.join_next().await {
                    None => return Ok(()),
                    Some(joined) => parts.push(joined.map_err(|e| join_error(key, e))??),
                }
            }
        }
        .await;
        if let Err(e) = outcome {
            // Cancel the parts still in flight and wait for them, so the abort that follows is
            // not overtaken by a part landing after it.
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            return Err(e);
        }
        parts.sort_by_key(|p| p.part_number());
        Ok((parts, total))
    }

    /// Server-side copy of a source larger than CopyObject allows, part by part.
    async fn copy_multipart(
        &self,
        src: &ObjectKey,
        src_info: &ObjectInfo,
        dst: &ObjectKey,
        precondition: &Precondition,
    ) -> Result<ObjectInfo, StoreError> {
        let upload = self.start_upload(dst, None).await?;
        let result = async {
            let parts = self.copy_parts(&upload, src, src_info).await?;
            let etag = upload.complete(parts, precondition).await?;
            Ok(ObjectInfo::new(dst.clone(), src_info.size, etag))
        }
        .await;
        if result.is_err() {
            upload.abort().await;
        }
        result
    }

    async fn copy_parts(
        &self,
        upload: &Upload,
        src: &ObjectKey,
        src_info: &ObjectInfo,
    ) -> Result<Vec<CompletedPart>, StoreError> {
        let size = src_info.size;
        let part = (self.cfg.part_size as u64).max(size.div_ceil(MAX_PARTS));
        let source = copy_source(&self.cfg.bucket, &self.full_key(src));
        let mut tasks: JoinSet<Result<CompletedPart, StoreError>> = JoinSet::new();
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let mut number = 0i32;
        let outcome = async {
            while offset < size || !tasks.is_empty() {
                if offset < size && tasks.len() < self.cfg.concurrency {
                    let end = (offset + part).min(size) - 1;
                    number += 1;
                    let range = format!("bytes={offset}-{end}");
                    tasks.spawn(upload.clone().copy_part(
                        number,
                        src.clone(),
                        source.clone(),
                        range,
                        src_info.etag.clone(),
                    ));
                    offset = end + 1;
                    continue;
                }
                if let Some(joined) = tasks.join_next().await {
                    parts.push(joined.map_err(|e| join_error(&upload.key, e))??);
                }
            }
            Ok::<_, StoreError>(())
        }
        .await;
        if let Err(e) = outcome {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            return Err(e);
        }
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }
}

/// A multipart upload in progress: everything a part request needs, cheap to clone into the
/// tasks that upload parts concurrently.
#[derive(Clone)]
struct Upload {
    client: Client,
    ctx: ErrCtx,
    bucket: String,
    /// The key in the bucket, prefix included.
    full: String,
    /// The store's key, for messages.
    key: ObjectKey,
    id: String,
}

impl Upload {
    async fn part(self, number: i32, data: Bytes) -> Result<CompletedPart, StoreError> {
        let len = data.len() as i64;
        // No part checksum: see the checksum note in `S3Store::connect`. The body is `Bytes`, so
        // the SDK's retries resend exactly the same part.
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.full)
            .upload_id(&self.id)
            .part_number(number)
            .content_length(len)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.ctx.map("uploading a part of", self.key.as_str(), e))?;
        let etag = etag_or_err(out.e_tag(), &self.ctx, &self.key)?;
        Ok(CompletedPart::builder().part_number(number).e_tag(etag.0).build())
    }

    async fn copy_part(
        self,
        number: i32,
        source_key: ObjectKey,
        source: String,
        range: String,
        source_etag: ETag,
    ) -> Result<CompletedPart, StoreError> {
        let out = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(&self.full)
            .upload_id(&self.id)
            .part_number(number)
            .copy_source(source)
            .copy_source_range(range)
            // Every part must come from the same version of the source.
            .copy_source_if_match(source_etag.0)
            .send()
            .await
            .map_err(|e| match status_of(&e) {
                Some(412) => source_changed(&source_key),
                _ => self.ctx.map("copying a part to", self.key.as_str(), e),
            })?;
        let etag = etag_or_err(out.copy_part_result().and_then(|r| r.e_tag()), &self.ctx, &self.key)?;
        Ok(CompletedPart::builder().part_number(number).e_tag(etag.0).build())
    }

    /// Makes the object visible. The precondition goes here because completion is the moment the
    /// object appears, and S3 checks it atomically with that.
    async fn complete(&self, parts: Vec<CompletedPart>, precondition: &Precondition) -> Result<ETag, StoreError> {
        let req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.full)
            .upload_id(&self.id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        let req = match precondition {
            Precondition::None => req,
            Precondition::IfAbsent => req.if_none_match("*"),
            Precondition::IfMatch(etag) => req.if_match(&etag.0),
        };
        let out = req.send().await.map_err(|e| self.ctx.map("completing the upload of", self.key.as_str(), e))?;
        etag_or_err(out.e_tag(), &self.ctx, &self.key)
    }

    /// Best effort: a failure here leaves parts behind, which the bucket's lifecycle rule
    /// (AbortIncompleteMultipartUpload) eventually removes.
    async fn abort(&self) {
        let sent =
            self.client.abort_multipart_upload().bucket(&self.bucket).key(&self.full).upload_id(&self.id).send().await;
        if let Err(e) = sent {
            tracing::warn!(
                key = %self.key,
                upload_id = self.id,
                error = %error_chain(&e),
                "could not abort a failed multipart upload; its parts stay until the bucket's lifecycle rule removes them"
            );
        }
    }
}

/// The copy source no longer has the ETag the copy started from.
fn source_changed(src: &ObjectKey) -> StoreError {
    StoreError::Other { message: format!("{src} changed while it was being copied; try again"), retryable: true }
}

fn join_error(key: &ObjectKey, e: tokio::task::JoinError) -> StoreError {
    StoreError::Other { message: format!("a part upload task for {key} failed: {e}"), retryable: false }
}

/// Reads up to `size` bytes, fewer only at the end of the body, into a buffer that starts at
/// `capacity` bytes (and grows if the body is longer than that).
async fn read_part(body: &mut BoxReader, size: usize, capacity: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(capacity.min(size));
    let mut limited = body.take(size as u64);
    while buf.len() < size {
        if limited.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

fn etag_or_err(etag: Option<&str>, ctx: &ErrCtx, key: &ObjectKey) -> Result<ETag, StoreError> {
    match etag {
        Some(e) if !e.is_empty() => Ok(ETag(e.to_owned())),
        _ => Err(ctx.protocol("the response has no ETag", key)),
    }
}

fn to_chrono(t: Option<&aws_smithy_types::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()))
}

/// The total size from a `Content-Range: bytes 5-99/100` header.
fn total_from_content_range(v: &str) -> Option<u64> {
    v.rsplit_once('/')?.1.trim().parse().ok()
}

/// `bucket/key` for CopySource, the key percent-encoded (keys may hold spaces, `+`, `%`...).
fn copy_source(bucket: &str, full_key: &str) -> String {
    let mut out = String::with_capacity(bucket.len() + full_key.len() + 8);
    out.push_str(bucket);
    out.push('/');
    for b in full_key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[async_trait]
impl ObjectStore for S3Store {
    fn url(&self) -> String {
        self.ctx.url.clone()
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, StoreError> {
        match self.client.head_object().bucket(&self.cfg.bucket).key(self.full_key(key)).send().await {
            Ok(out) => Ok(Some(ObjectInfo {
                key: key.clone(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: etag_or_err(out.e_tag(), &self.ctx, key)?,
                last_modified: to_chrono(out.last_modified()),
                version_id: out.version_id().map(str::to_owned),
                write_id: out.metadata().and_then(|m| m.get(WRITE_ID_META)).cloned(),
            })),
            // HEAD responses have no body, so a missing bucket is also a bare 404 here; it
            // surfaces as NoSuchBucket on the next GET, PUT or LIST.
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.ctx.map("reading", key.as_str(), e)),
        }
    }

    async fn get(&self, key: &ObjectKey, opts: GetOptions) -> Result<GetObject, StoreError> {
        let mut req = self.client.get_object().bucket(&self.cfg.bucket).key(self.full_key(key));
        match opts.length {
            Some(n) if n > 0 => req = req.range(format!("bytes={}-{}", opts.offset, opts.offset + n - 1)),
            _ if opts.offset > 0 => req = req.range(format!("bytes={}-", opts.offset)),
            _ => {}
        }
        if let Some(etag) = &opts.if_match {
            req = req.if_match(&etag.0);
        }
        if let Some(v) = &opts.version_id {
            req = req.version_id(v);
        }
        match req.send().await {
            Ok(out) => {
                let size = if opts.offset > 0 || opts.length.is_some_and(|n| n > 0) {
                    out.content_range()
                        .and_then(total_from_content_range)
                        .ok_or_else(|| self.ctx.protocol("a ranged GET response has no usable Content-Range", key))?
                } else {
                    out.content_length().unwrap_or(0).max(0) as u64
                };
                let info = ObjectInfo {
                    key: key.clone(),
                    size,
                    etag: etag_or_err(out.e_tag(), &self.ctx, key)?,
                    last_modified: to_chrono(out.last_modified()),
                    version_id: out.version_id().map(str::to_owned),
                    write_id: out.metadata().and_then(|m| m.get(WRITE_ID_META)).cloned(),
                };
                Ok(GetObject { info, body: Box::pin(out.body.into_async_read()) })
            }
            // S3 answers 416 for a range starting at (or past) the end, e.g. resuming a download
            // that had already finished. The other stores return an empty body there, so learn
            // the size and ETag with a HEAD (same conditions) and do the same.
            Err(e) if opts.offset > 0 && status_of(&e) == Some(416) => {
                let mut head = self.client.head_object().bucket(&self.cfg.bucket).key(self.full_key(key));
                if let Some(etag) = &opts.if_match {
                    head = head.if_match(&etag.0);
                }
                if let Some(v) = &opts.version_id {
                    head = head.version_id(v);
                }
                let out = head.send().await.map_err(|e| self.ctx.map("reading", key.as_str(), e))?;
                let info = ObjectInfo {
                    key: key.clone(),
                    size: out.content_length().unwrap_or(0).max(0) as u64,
                    etag: etag_or_err(out.e_tag(), &self.ctx, key)?,
                    last_modified: to_chrono(out.last_modified()),
                    version_id: out.version_id().map(str::to_owned),
                    write_id: out.metadata().and_then(|m| m.get(WRITE_ID_META)).cloned(),
                };
                if opts.offset < info.size {
                    // The object grew between the two requests: let the caller try again.
                    return Err(StoreError::Other {
                        message: format!("{key} changed while it was being read; try again"),
                        retryable: true,
                    });
                }
                Ok(GetObject { info, body: reader_from_bytes(Bytes::new()) })
            }
            Err(e) => Err(self.ctx.map("reading", key.as_str(), e)),
        }
    }

    async fn put_bytes(
        &self,
        key: &ObjectKey,
        body: Bytes,
        precondition: Precondition,
    ) -> Result<ObjectInfo, StoreError> {
        self.put_object(key, body, precondition, None).await
    }

    async fn put_stream(
        &self,
        key: &ObjectKey,
        mut body: BoxReader,
        mut opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        // A known size may need bigger parts to stay within S3's 10,000-part limit.
        let part_size = match opts.size_hint {
            Some(n) => (self.cfg.part_size as u64).max(n.div_ceil(MAX_PARTS)).min(MAX_PART_SIZE as u64) as usize,
            None => self.cfg.part_size,
        };
        // A small hinted body gets a small buffer, not a whole part's.
        let capacity = opts.size_hint.map_or(part_size, |n| (n as usize).saturating_add(1));
        let first = read_part(&mut body, part_size, capacity)
            .await
            .map_err(|e| StoreError::io(format!("reading the body for {key}"), e))?;
        if first.len() < part_size && !opts.multipart {
            // The whole body fits in one part: one PutObject, no multipart bookkeeping.
            if let Some(check) = opts.commit_check.take() {
                check().await.map_err(|reason| StoreError::Aborted { key: key.to_string(), reason })?;
            }
            return self.put_object(key, first, opts.precondition, opts.write_id.as_deref()).await;
        }
        self.put_multipart(key, first, body, opts, part_size).await
    }

    async fn list_page(&self, prefix: &str, delimited: bool, token: Option<String>) -> Result<ListPage, StoreError> {
        let mut req =
            self.client.list_objects_v2().bucket(&self.cfg.bucket).prefix(format!("{}{prefix}", self.cfg.prefix));
        if delimited {
            req = req.delimiter("/");
        }
        if let Some(t) = token {
            req = req.continuation_token(t);
        }
        if let Some(n) = self.cfg.list_page_size {
            req = req.max_keys(n);
        }
        let out = req.send().await.map_err(|e| self.ctx.map("listing", prefix, e))?;
        let strip = |k: &str| k.strip_prefix(self.cfg.prefix.as_str()).map(str::to_owned);
        let mut page = ListPage::default();
        for o in out.contents() {
            // Keys that are not valid s3dock keys (written by other tools) are not ours to show.
            let Some(key) = o.key().and_then(strip).and_then(|k| ObjectKey::parse(&k).ok()) else {
                continue;
            };
            let mut info = ObjectInfo::new(
                key,
                o.size().unwrap_or(0).max(0) as u64,
                ETag(o.e_tag().unwrap_or_default().to_owned()),
            );
            info.last_modified = to_chrono(o.last_modified());
            page.objects.push(info);
        }
        page.prefixes = out.common_prefixes().iter().filter_map(|p| p.prefix().and_then(strip)).collect();
        if out.is_truncated() == Some(true) {
            page.next = out.next_continuation_token().map(str::to_owned);
        }
        Ok(page)
    }

    async fn compose(&self, key: &ObjectKey, pieces: PieceStream, opts: PutOptions) -> Result<ObjectInfo, StoreError> {
        self.compose_parts(key, pieces, opts).await
    }

    async fn copy(
        &self,
        src: &ObjectKey,
        dst: &ObjectKey,
        precondition: Precondition,
    ) -> Result<ObjectInfo, StoreError> {
        if let Precondition::IfMatch(_) = precondition {
            // AWS documents If-Match on CopyObject, but LocalStack and moto ignore it, and a
            // look-then-copy emulation would be exactly the race compare-and-swap exists to
            // prevent. Nothing in s3dock needs it.
            return Err(StoreError::Other {
                message: format!(
                    "copying onto {dst} with an If-Match precondition is not supported by the S3 store; copy to a new key with IfAbsent, or read the source and put_bytes with IfMatch"
                ),
                retryable: false,
            });
        }
        let src_info = self.head(src).await?.ok_or_else(|| StoreError::NotFound { key: src.to_string() })?;
        if precondition == Precondition::IfAbsent {
            // A create-only copy goes through a multipart upload whose completion carries
            // `If-None-Match: *`: S3 checks that atomically, and IAM's `s3:if-none-match`
            // condition (create-only grants on archive/) can be met by it, which a CopyObject
            // cannot (AWS answers 501 to a conditional CopyObject). Every part is copied server
            // side, pinned to the source's ETag; a small source is one part.
            if src_info.size == 0 {
                return self.put_object(dst, Bytes::new(), precondition, None).await;
            }
            return self.copy_multipart(src, &src_info, dst, &precondition).await;
        }
        if src_info.size > self.cfg.multipart_copy_threshold {
            return self.copy_multipart(src, &src_info, dst, &precondition).await;
        }
        let out = self
            .client
            .copy_object()
            .bucket(&self.cfg.bucket)
            .key(self.full_key(dst))
            .copy_source(copy_source(&self.cfg.bucket, &self.full_key(src)))
            // Copy exactly the version just inspected (its size chose this path).
            .copy_source_if_match(&src_info.etag.0)
            .send()
            .await
            .map_err(|e| match status_of(&e) {
                Some(412) => source_changed(src),
                _ => self.ctx.map("copying to", dst.as_str(), e),
            })?;
        let result = out.copy_object_result();
        let etag = etag_or_err(result.and_then(|r| r.e_tag()), &self.ctx, dst)?;
        let mut info = ObjectInfo::new(dst.clone(), src_info.size, etag);
        info.last_modified = to_chrono(result.and_then(|r| r.last_modified()));
        info.version_id = out.version_id().map(str::to_owned);
        Ok(info)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        match self.client.delete_object().bucket(&self.cfg.bucket).key(self.full_key(key)).send().await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) && error_code(&e) != Some("NoSuchBucket") => Ok(()),
            Err(e) => Err(self.ctx.map("deleting", key.as_str(), e)),
        }
    }

    async fn delete_if(&self, key: &ObjectKey, etag: &ETag) -> Result<(), StoreError> {
        // AWS checks `If-Match` on DeleteObject atomically with the delete. Emulators may not
        // (LocalStack and moto ignore it), so look first as well: a HEAD-then-delete window
        // remains there, and only there.
        match self.head(key).await? {
            None => return Err(StoreError::NotFound { key: key.to_string() }),
            Some(info) if &info.etag != etag => return Err(StoreError::PreconditionFailed { key: key.to_string() }),
            Some(_) => {}
        }
        let sent =
            self.client.delete_object().bucket(&self.cfg.bucket).key(self.full_key(key)).if_match(&etag.0).send().await;
        match sent {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(412) => Err(StoreError::PreconditionFailed { key: key.to_string() }),
            Err(e) if status_of(&e) == Some(404) && error_code(&e) != Some("NoSuchBucket") => {
                Err(StoreError::NotFound { key: key.to_string() })
            }
            // A server that does not know conditional deletes may refuse the header: the HEAD
            // above already compared the ETag, so delete without it.
            Err(e) if status_of(&e) == Some(501) => self.delete(key).await,
            Err(e) => Err(self.ctx.map("deleting", key.as_str(), e)),
        }
    }
}

fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

fn error_code<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> Option<&str> {
    match e {
        SdkError::ServiceError(se) => se.err().code(),
        _ => None,
    }
}

/// What an error message needs to know about the store.
#[derive(Debug, Clone)]
struct ErrCtx {
    url: String,
    bucket: String,
    endpoint: String,
}

/// Error codes S3 uses for refused credentials or permissions.
const ACCESS_CODES: &[&str] = &[
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidSecurity",
];

/// Error codes that mean "busy or failing right now": worth a later retry.
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
];

impl ErrCtx {
    /// The one mapping from SDK failures to [`StoreError`]. `doing` reads like "writing" or
    /// "listing", `key` is the store-relative key (or prefix) the request was about.
    fn map<E>(&self, doing: &str, key: &str, err: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        // A credentials provider failure surfaces as a dispatch failure (the request was never
        // sent), so look for it before treating dispatch failures as network trouble.
        if has_credentials_error(&err) {
            return StoreError::NoCredentials { detail: error_chain(&err).to_string() };
        }
        match &err {
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                self.map_service(doing, key, status, se.err().code(), se.err().message())
            }
            SdkError::TimeoutError(_) => {
                StoreError::Unreachable { endpoint: self.endpoint.clone(), detail: format!("{doing} {key} timed out") }
            }
            SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => StoreError::Unreachable {
                endpoint: self.endpoint.clone(),
                detail: format!("{doing} {key}: {}", error_chain(&err)),
            },
            SdkError::DispatchFailure(d) => StoreError::Other {
                message: format!(
                    "{doing} {key} on {} failed before the request was answered: {}; check the endpoint and region settings",
                    self.url,
                    error_chain(&err)
                ),
                retryable: d.as_other() == Some(RetryErrorKind::TransientError),
            },
            SdkError::ResponseError(_) => StoreError::Other {
                message: format!(
                    "{doing} {key} on {}: the response could not be read ({}); try again, and check that {} is an S3 endpoint",
                    self.url,
                    error_chain(&err),
                    self.endpoint
                ),
                retryable: true,
            },
            _ => StoreError::Other {
                message: format!(
                    "{doing} {key} on {}: the request could not be built ({}); check the store settings (bucket, prefix, region, endpoint)",
                    self.url,
                    error_chain(&err)
                ),
                retryable: false,
            },
        }
    }

    /// An error response from the service, by HTTP status and S3 error code (HEAD responses
    /// carry no body, so their code is absent or generic).
    fn map_service(
        &self,
        doing: &str,
        key: &str,
        status: u16,
        code: Option<&str>,
        message: Option<&str>,
    ) -> StoreError {
        let code_s = code.unwrap_or("");
        let said = match (code, message) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_owned(),
            (None, Some(m)) => m.to_owned(),
            (None, None) => format!("HTTP {status}"),
        };
        if code_s == "NoSuchBucket" {
            return StoreError::NoSuchBucket { bucket: self.bucket.clone() };
        }
        if status == 412 || code_s == "PreconditionFailed" || code_s == "ConditionalRequestConflict" {
            // 409 ConditionalRequestConflict: a concurrent conditional write to the same key
            // won; for the caller that is exactly a lost compare-and-swap.
            return StoreError::PreconditionFailed { key: key.to_owned() };
        }
        if code_s == "NoSuchUpload" {
            return StoreError::Other {
                message: format!(
                    "{doing} {key} on {}: the multipart upload was aborted meanwhile (by a lifecycle rule or another process); start the upload again",
                    self.url
                ),
                retryable: true,
            };
        }
        if status == 404 {
            return StoreError::NotFound { key: key.to_owned() };
        }
        if status == 403 || ACCESS_CODES.contains(&code_s) {
            return StoreError::AccessDenied { store: self.url.clone(), detail: format!("{doing} {key}: {said}") };
        }
        if status == 301
            || matches!(
                code_s,
                "PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException"
            )
        {
            return StoreError::Other {
                message: format!(
                    "{doing} {key} on {}: {said}; the bucket is probably in another region: set the store's region to the bucket's",
                    self.url
                ),
                retryable: false,
            };
        }
        if status >= 500 || status == 429 || TRANSIENT_CODES.contains(&code_s) {
            return StoreError::Other {
                message: format!(
                    "{doing} {key} on {}: {said} (HTTP {status}); S3 is busy or failing, try again later",
                    self.url
                ),
                retryable: true,
            };
        }
        StoreError::Other {
            message: format!(
                "{doing} {key} on {} failed: {said} (HTTP {status}); check the request and that {} supports it",
                self.url, self.endpoint
            ),
            retryable: false,
        }
    }

    /// The service answered but not as S3 does.
    fn protocol(&self, what: &str, key: &ObjectKey) -> StoreError {
        StoreError::Other {
            message: format!(
                "{key} on {}: {what}; check that {} is an S3-compatible endpoint",
                self.url, self.endpoint
            ),
            retryable: false,
        }
    }
}

/// An error and its sources, `outer: inner: innermost`, for messages (the SDK's own
/// `DisplayErrorContext` appends a `Debug` dump users should not have to read).
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = e.source();
    }
    out
}

/// Whether `err`'s source chain holds the credentials provider's error type (shared with the
/// SQS client's error mapping).
pub(crate) fn has_credentials_error(err: &(dyn StdError + 'static)) -> bool {
    // aws-credential-types is not a direct dependency, so its `CredentialsError` is named
    // through the output type of the provider trait the SDK re-exports. The closure is never
    // called; it only pins the type parameters.
    fn is_provider_error<F, T, E>(_: fn(&'static SharedCredentialsProvider) -> F, e: &(dyn StdError + 'static)) -> bool
    where
        F: Future<Output = Result<T, E>>,
        E: StdError + 'static,
    {
        e.is::<E>()
    }
    let mut next = Some(err);
    while let Some(e) = next {
        if is_provider_error(|p| p.provide_credentials(), e) {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::config::BehaviorVersion;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::operation::put_object::PutObjectError;
    use aws_sdk_s3::types::error::NoSuchKey;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;
    use aws_smithy_types::retry::RetryConfig;

    use super::*;

    fn ctx() -> ErrCtx {
        ErrCtx { url: "s3://b-1/p".into(), bucket: "b-1".into(), endpoint: "http://127.0.0.1:4566".into() }
    }

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(StatusCode::try_from(status).expect("valid status"), SdkBody::empty())
    }

    fn put_error(status: u16, code: &str, message: &str) -> SdkError<PutObjectError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(PutObjectError::generic(meta), response(status))
    }

    #[test]
    fn parses_store_urls() {
        let c = S3Config::from_url("s3://my-images").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("my-images", ""));
        assert_eq!(c.url(), "s3://my-images");
        let c = S3Config::from_url("s3://my.images-2/team-a/prod/").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("my.images-2", "team-a/prod/"));
        assert_eq!(c.url(), "s3://my.images-2/team-a/prod");
        assert_eq!(S3Config::from_url(&c.url()).unwrap(), c);
        assert_eq!(S3Config::from_url("s3://abc/").unwrap().prefix, "");
    }

    #[test]
    fn has_sensible_defaults() {
        let c = S3Config::new("abc").unwrap();
        assert_eq!(c.part_size, 16 * MIB);
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.max_attempts, 4);
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.multipart_copy_threshold, MAX_SINGLE_COPY);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn refuses_bad_urls_with_a_hint() {
        for (url, needle) in [
            ("https://bucket/x", "does not start with s3://"),
            ("s3://", "bucket name is missing"),
            ("s3:///prefix", "bucket name is missing"),
            ("s3://bucket?versionId=1", "query"),
            ("s3://Bucket", "'B'"),
            ("s3://ab", "2 characters"),
            (&format!("s3://{}", "a".repeat(64)), "64 characters"),
            ("s3://-bucket", "start and end"),
            ("s3://bucket-", "start and end"),
            ("s3://my..bucket", "'.' next to"),
            ("s3://my_bucket", "'_'"),
            ("s3://192.168.1.10", "IP address"),
            ("s3://bucket/a//b", "empty path segment"),
            ("s3://bucket/a/../b", "\"..\""),
        ] {
            let err = S3Config::from_url(url).expect_err(url).to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(
                err.contains("bucket names are") || err.contains("s3://BUCKET") || err.contains("use folder names"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn normalizes_prefixes() {
        for (raw, want) in [("", ""), ("/", ""), ("a", "a/"), ("/a/b/", "a/b/"), ("a/b", "a/b/"), ("x y+z", "x y+z/")] {
            assert_eq!(normalize_prefix(raw).unwrap(), want, "{raw:?}");
        }
        let c = S3Config { prefix: "/team/".into(), ..S3Config::new("abc").unwrap() };
        assert_eq!(c.validate().unwrap().prefix, "team/");
        assert_eq!(c.validate().unwrap().url(), "s3://abc/team");
    }

    #[test]
    fn validates_limits_and_endpoints() {
        let base = S3Config::new("abc").unwrap();
        let bad = [
            S3Config { part_size: MIN_PART_SIZE - 1, ..base.clone() },
            S3Config { concurrency: 0, ..base.clone() },
            S3Config { max_attempts: 0, ..base.clone() },
            S3Config { list_page_size: Some(0), ..base.clone() },
            S3Config { multipart_copy_threshold: MAX_SINGLE_COPY + 1, ..base.clone() },
            S3Config { endpoint: Some("127.0.0.1:4566".into()), ..base.clone() },
            S3Config { region: Some("us east".into()), ..base.clone() },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let secret = S3Config { endpoint: Some("http://AKIA:hunter2@minio.local:9000".into()), ..base.clone() };
        let err = secret.validate().unwrap_err().to_string();
        assert!(err.contains("embeds credentials") && !err.contains("hunter2") && !err.contains("AKIA"), "{err}");
        let ok = S3Config { endpoint: Some("http://127.0.0.1:4566".into()), list_page_size: Some(5), ..base };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn redacts_userinfo() {
        assert_eq!(redact_userinfo("http://u:p@h:1/x"), "http://h:1/x");
        assert_eq!(redact_userinfo("http://h:1"), "http://h:1");
    }

    #[test]
    fn encodes_copy_sources() {
        assert_eq!(copy_source("b", "p/x y+z%.json"), "b/p/x%20y%2Bz%25.json");
        assert_eq!(copy_source("b", "images/a-1/v1.2.0_x~y.tar.gz"), "b/images/a-1/v1.2.0_x~y.tar.gz");
        assert_eq!(copy_source("b", "é"), "b/%C3%A9");
    }

    #[test]
    fn reads_the_total_from_content_range() {
        assert_eq!(total_from_content_range("bytes 5-99/100"), Some(100));
        assert_eq!(total_from_content_range("bytes */0"), Some(0));
        assert_eq!(total_from_content_range("bytes 5-99/*"), None);
    }

    #[test]
    fn maps_service_errors() {
        let c = ctx();
        let map = |status, code, msg| c.map("writing", "k/x", put_error(status, code, msg));
        assert!(
            matches!(map(412, "PreconditionFailed", "At least one..."), StoreError::PreconditionFailed { key } if key == "k/x")
        );
        assert!(map(409, "ConditionalRequestConflict", "conflict").is_precondition_failed());
        assert!(matches!(map(404, "NoSuchKey", "gone"), StoreError::NotFound { key } if key == "k/x"));
        assert!(matches!(map(404, "NoSuchBucket", "nope"), StoreError::NoSuchBucket { bucket } if bucket == "b-1"));
        for code in ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"] {
            let e = map(403, code, "denied");
            assert!(matches!(&e, StoreError::AccessDenied { detail, .. } if detail.contains(code)), "{e:?}");
            assert!(e.to_string().contains("AWS_PROFILE"), "{e}");
        }
        let e = map(503, "SlowDown", "reduce your request rate");
        assert!(e.is_retryable() && e.to_string().contains("try again later"), "{e}");
        assert!(map(500, "InternalError", "oops").is_retryable());
        let e = map(400, "InvalidArgument", "bad header");
        assert!(!e.is_retryable(), "{e:?}");
        let s = e.to_string();
        assert!(s.contains("InvalidArgument") && s.contains("bad header") && s.contains("HTTP 400"), "{s}");
        assert!(map(301, "PermanentRedirect", "wrong region").to_string().contains("set the store's region"));
        let e = map(404, "NoSuchUpload", "aborted");
        assert!(matches!(e, StoreError::Other { retryable: true, .. }), "{e:?}");
    }

    #[test]
    fn maps_modeled_and_bodyless_errors() {
        let c = ctx();
        let e = SdkError::service_error(GetObjectError::NoSuchKey(NoSuchKey::builder().build()), response(404));
        assert!(c.map("reading", "a/b", e).is_not_found());
        // A HEAD 403/412 has no body, so no code: the status decides.
        let e = SdkError::service_error(PutObjectError::generic(ErrorMetadata::builder().build()), response(403));
        assert!(matches!(c.map("reading", "a/b", e), StoreError::AccessDenied { .. }));
        let e = SdkError::service_error(PutObjectError::generic(ErrorMetadata::builder().build()), response(412));
        assert!(c.map("writing", "a/b", e).is_precondition_failed());
    }

    #[test]
    fn maps_connection_failures_to_unreachable() {
        let c = ctx();
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e: SdkError<PutObjectError, HttpResponse> = SdkError::dispatch_failure(ConnectorError::io(refused.into()));
        let mapped = c.map("writing", "a", e);
        assert!(matches!(&mapped, StoreError::Unreachable { endpoint, .. } if endpoint == "http://127.0.0.1:4566"));
        assert!(mapped.is_retryable());
        let e: SdkError<PutObjectError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::timeout("connect timed out".into()));
        assert!(matches!(c.map("writing", "a", e), StoreError::Unreachable { .. }));
        let e: SdkError<PutObjectError, HttpResponse> = SdkError::timeout_error("operation timed out");
        assert!(matches!(c.map("writing", "a", e), StoreError::Unreachable { .. }));
        let e: SdkError<PutObjectError, HttpResponse> = SdkError::construction_failure("bad input");
        assert!(matches!(c.map("writing", "a", e), StoreError::Other { retryable: false, .. }));
    }

    /// A real client whose credentials provider fails (a profile that does not exist in an
    /// empty profile file): the failure must map to `NoCredentials`, not `Unreachable`.
    #[tokio::test]
    // The non-deprecated names of the profile-file types live in aws-runtime, which is not a
    // direct dependency.
    #[allow(deprecated)]
    async fn maps_missing_credentials() {
        use aws_config::profile::ProfileFileCredentialsProvider;
        use aws_config::profile::profile_file::{ProfileFileKind, ProfileFiles};
        let files = ProfileFiles::builder()
            .include_default_config_file(false)
            .include_default_credentials_file(false)
            .with_contents(ProfileFileKind::Config, "[default]\nregion = us-east-1\n")
            .build();
        let provider = ProfileFileCredentialsProvider::builder()
            .profile_files(files)
            .profile_name("s3dock-no-such-profile")
            .build();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:1")
            .credentials_provider(provider)
            .retry_config(RetryConfig::disabled())
            .build();
        let client = Client::from_conf(conf);
        let err = client.head_object().bucket("b-1").key("k").send().await.expect_err("no credentials");
        let mapped = ctx().map("reading", "k", err);
        assert!(matches!(mapped, StoreError::NoCredentials { .. }), "{mapped:?}");
        assert!(mapped.to_string().contains("AWS_PROFILE"), "{mapped}");
    }

    #[tokio::test]
    async fn connect_reports_bad_settings_before_any_request() {
        let cfg = S3Config { part_size: 1, ..S3Config::new("abc").unwrap() };
        let err = S3Store::connect(cfg).await.unwrap_err().to_string();
        assert!(err.contains("part size"), "{err}");
    }
}
