//! Reads: HEAD, and GET with ranges (resuming a download), ETag pinning and versions.

use bytes::Bytes;
use s3dock_core::names::ObjectKey;
use s3dock_core::store::{GetObject, GetOptions, ObjectInfo, StoreError, reader_from_bytes};

use super::{S3Store, WRITE_ID_META, etag_or_err, to_chrono};
use crate::error::status_of;

impl S3Store {
    pub(super) async fn head_object(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, StoreError> {
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

    pub(super) async fn get_object(&self, key: &ObjectKey, opts: GetOptions) -> Result<GetObject, StoreError> {
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
                    return Err(StoreError::other(format!("{key} changed while it was being read; try again"), true));
                }
                Ok(GetObject { info, body: reader_from_bytes(Bytes::new()) })
            }
            Err(e) => Err(self.ctx.map("reading", key.as_str(), e)),
        }
    }
}

/// The total size from a `Content-Range: bytes 5-99/100` header.
fn total_from_content_range(v: &str) -> Option<u64> {
    v.rsplit_once('/')?.1.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_total_from_content_range() {
        assert_eq!(total_from_content_range("bytes 5-99/100"), Some(100));
        assert_eq!(total_from_content_range("bytes */0"), Some(0));
        assert_eq!(total_from_content_range("bytes 5-99/*"), None);
    }
}
