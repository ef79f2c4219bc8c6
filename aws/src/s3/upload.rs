//! Writes: one PutObject for a small body, a multipart upload with bounded parts in flight
//! for a large one, and the [`Upload`] every multipart path (uploads and part copies) shares.

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use s3dock_core::names::ObjectKey;
use s3dock_core::store::{BoxReader, ETag, ObjectInfo, Precondition, PutOptions, StoreError};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

use super::config::config_error;
use super::errors::ErrCtx;
use super::{MAX_PART_SIZE, MAX_PARTS, S3Store, WRITE_ID_META, etag_or_err};
use crate::error::error_chain;

impl S3Store {
    /// `put_stream`: one PutObject when the body fits in a part, a multipart upload otherwise.
    pub(super) async fn put_stream_object(
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
    pub(super) async fn put_object(
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
    pub(super) async fn start_upload(&self, key: &ObjectKey, write_id: Option<&str>) -> Result<Upload, StoreError> {
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
}

/// A multipart upload in progress: everything a part request needs, cheap to clone into the
/// tasks that upload parts concurrently.
#[derive(Clone)]
pub(super) struct Upload {
    pub(super) client: Client,
    pub(super) ctx: ErrCtx,
    pub(super) bucket: String,
    /// The key in the bucket, prefix included.
    pub(super) full: String,
    /// The store's key, for messages.
    pub(super) key: ObjectKey,
    pub(super) id: String,
}

impl Upload {
    pub(super) async fn part(self, number: i32, data: Bytes) -> Result<CompletedPart, StoreError> {
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

    /// Makes the object visible. The precondition goes here because completion is the moment the
    /// object appears, and S3 checks it atomically with that.
    pub(super) async fn complete(
        &self,
        parts: Vec<CompletedPart>,
        precondition: &Precondition,
    ) -> Result<ETag, StoreError> {
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
    pub(super) async fn abort(&self) {
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

pub(super) fn join_error(key: &ObjectKey, e: tokio::task::JoinError) -> StoreError {
    StoreError::other_caused(format!("a part upload task for {key} failed: {e}"), false, e)
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
