//! Server-side copies: CopyObject pinned to the inspected source, or a multipart upload of
//! part copies for large sources and for create-only copies.

use std::fmt::Write as _;

use aws_sdk_s3::types::CompletedPart;
use bytes::Bytes;
use s3dock_core::names::ObjectKey;
use s3dock_core::store::{ETag, ObjectInfo, Precondition, StoreError};
use tokio::task::JoinSet;

use super::upload::{Upload, join_error};
use super::{MAX_PARTS, S3Store, etag_or_err, to_chrono};
use crate::error::status_of;

impl S3Store {
    pub(super) async fn copy_object(
        &self,
        src: &ObjectKey,
        dst: &ObjectKey,
        precondition: Precondition,
    ) -> Result<ObjectInfo, StoreError> {
        if let Precondition::IfMatch(_) = precondition {
            // AWS documents If-Match on CopyObject, but LocalStack and moto ignore it, and a
            // look-then-copy emulation would be exactly the race compare-and-swap exists to
            // prevent. Nothing in s3dock needs it.
            return Err(StoreError::other(
                format!(
                    "copying onto {dst} with an If-Match precondition is not supported by the S3 store; copy to a new key with IfAbsent, or read the source and put_bytes with IfMatch"
                ),
                false,
            ));
        }
        let src_info = self.head_object(src).await?.ok_or_else(|| StoreError::NotFound { key: src.to_string() })?;
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

impl Upload {
    pub(super) async fn copy_part(
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
}

/// The copy source no longer has the ETag the copy started from.
fn source_changed(src: &ObjectKey) -> StoreError {
    StoreError::other(format!("{src} changed while it was being copied; try again"), true)
}

/// `bucket/key` for CopySource, the key percent-encoded (keys may hold spaces, `+`, `%`...).
pub(super) fn copy_source(bucket: &str, full_key: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_copy_sources() {
        assert_eq!(copy_source("b", "p/x y+z%.json"), "b/p/x%20y%2Bz%25.json");
        assert_eq!(copy_source("b", "images/a-1/v1.2.0_x~y.tar.gz"), "b/images/a-1/v1.2.0_x~y.tar.gz");
        assert_eq!(copy_source("b", "é"), "b/%C3%A9");
    }
}
