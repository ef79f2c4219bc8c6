//! Composed objects on S3: one multipart upload whose parts are either uploaded bytes or
//! ranges of existing objects copied on the server (UploadPartCopy with
//! `x-amz-copy-source-range`, conditioned on the source's ETag with
//! `x-amz-copy-source-if-match`).
//!
//! Every part but the last must be at least 5 MiB. Bytes are gathered into parts of the
//! store's part size, always leaving at least 5 MiB behind; a copied range of at least 5 MiB
//! becomes its own part(s). A range smaller than 5 MiB is downloaded whole and uploaded with
//! its neighbours. The layered layout writes large ranges first and small ones (new or
//! reused) last (`s3dock_core::layers::encode`), so bytes waiting before a large copied range
//! are either none or a whole new layer of at least 5 MiB; only when they are fewer (another
//! layout) are the range's first bytes downloaded to complete them. Completion carries the
//! write's precondition, like every upload.

use bytes::{Buf, Bytes, BytesMut};
use tokio::task::JoinSet;

use aws_sdk_s3::types::CompletedPart;
use s3dock_core::names::ObjectKey;
use s3dock_core::store::compose::{CopyRange, Piece, PieceStream, next_piece, read_range};
use s3dock_core::store::{ObjectInfo, PutOptions, StoreError};

use super::S3Store;
use super::config::{MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE};
use super::copy::copy_source;
use super::upload::{Upload, join_error};

/// The largest range one UploadPartCopy copies here (S3 allows 5 GiB).
const MAX_COPY_PART: u64 = 1 << 30;

impl S3Store {
    pub(super) async fn compose_parts(
        &self,
        key: &ObjectKey,
        pieces: PieceStream,
        opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        let upload = self.start_upload(key, opts.write_id.as_deref()).await?;
        let mut tasks: JoinSet<Result<CompletedPart, StoreError>> = JoinSet::new();
        let result = async {
            let mut parts = Vec::new();
            let total = self.send_parts(&upload, pieces, &mut tasks, &mut parts).await?;
            while let Some(joined) = tasks.join_next().await {
                parts.push(joined.map_err(|e| join_error(key, e))??);
            }
            parts.sort_by_key(|p| p.part_number());
            let etag = upload.complete(parts, &opts.precondition).await?;
            let mut info = ObjectInfo::new(key.clone(), total, etag);
            info.write_id = opts.write_id.clone();
            Ok(info)
        }
        .await;
        if let Err(e) = &result {
            tracing::debug!(key = %key, error = %e, "composed upload failed; aborting it");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            upload.abort().await;
        }
        result
    }

    /// Starts every part; returns the object's size. Parts still running are left in `tasks`.
    async fn send_parts(
        &self,
        upload: &Upload,
        mut pieces: PieceStream,
        tasks: &mut JoinSet<Result<CompletedPart, StoreError>>,
        parts: &mut Vec<CompletedPart>,
    ) -> Result<u64, StoreError> {
        let key = &upload.key;
        let part_size = self.cfg.part_size.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
        // Room for a part, the minimum left behind, and one more piece (at most a small range
        // or a held-back layer, under 5 MiB): the buffer never grows past it, and parts are
        // copied out of it, so a part in flight never pins the buffer's allocation.
        let mut buf = BytesMut::with_capacity(part_size + 2 * MIN_PART_SIZE);
        let mut number: i32 = 0;
        let mut total = 0u64;
        let next = |n: &mut i32| -> Result<i32, StoreError> {
            *n += 1;
            if *n as u64 > MAX_PARTS {
                return Err(StoreError::other(format!("{key} would need more than {MAX_PARTS} parts"), false));
            }
            Ok(*n)
        };
        while let Some(piece) = next_piece(&mut pieces).await {
            let piece = piece.map_err(|e| StoreError::io(format!("reading the body for {key}"), e))?;
            match piece {
                Piece::Data(b) => {
                    total += b.len() as u64;
                    buf.extend_from_slice(&b);
                }
                Piece::Copy(mut range) => {
                    total += range.length;
                    if range.length < MIN_PART_SIZE as u64 {
                        buf.extend_from_slice(&self.download(&range).await?);
                    } else {
                        if !buf.is_empty() && buf.len() < MIN_PART_SIZE {
                            // Complete the bytes waiting before the range with its first bytes.
                            let need = (MIN_PART_SIZE - buf.len()) as u64;
                            let head = CopyRange { length: need, ..range.clone() };
                            buf.extend_from_slice(&self.download(&head).await?);
                            range.offset += need;
                            range.length -= need;
                        }
                        if !buf.is_empty() {
                            let n = next(&mut number)?;
                            tasks.spawn(upload.clone().part(n, Bytes::copy_from_slice(&buf)));
                            buf.clear();
                        }
                        if range.length < MIN_PART_SIZE as u64 {
                            buf.extend_from_slice(&self.download(&range).await?);
                        } else {
                            let count = range.length.div_ceil(MAX_COPY_PART);
                            let chunk = range.length.div_ceil(count);
                            let source = copy_source(&self.cfg.bucket, &self.full_key(&range.key));
                            let mut at = range.offset;
                            let end = range.offset + range.length;
                            while at < end {
                                let last = (at + chunk).min(end) - 1;
                                let n = next(&mut number)?;
                                tasks.spawn(upload.clone().copy_part(
                                    n,
                                    range.key.clone(),
                                    source.clone(),
                                    format!("bytes={at}-{last}"),
                                    range.etag.clone(),
                                ));
                                at = last + 1;
                                self.throttle(upload, tasks, parts).await?;
                            }
                        }
                    }
                }
            }
            // Leave at least a minimum part behind, so that bytes waiting before a copied
            // range make a part of their own without borrowing the range's head.
            while buf.len() >= part_size + MIN_PART_SIZE {
                let n = next(&mut number)?;
                let part = Bytes::copy_from_slice(&buf[..part_size]);
                buf.advance(part_size);
                tasks.spawn(upload.clone().part(n, part));
                self.throttle(upload, tasks, parts).await?;
            }
            self.throttle(upload, tasks, parts).await?;
        }
        if !buf.is_empty() || number == 0 {
            let n = next(&mut number)?;
            tasks.spawn(upload.clone().part(n, buf.split().freeze()));
        }
        Ok(total)
    }

    /// Waits while `concurrency` parts are in flight.
    async fn throttle(
        &self,
        upload: &Upload,
        tasks: &mut JoinSet<Result<CompletedPart, StoreError>>,
        parts: &mut Vec<CompletedPart>,
    ) -> Result<(), StoreError> {
        while tasks.len() >= self.cfg.concurrency {
            if let Some(joined) = tasks.join_next().await {
                parts.push(joined.map_err(|e| join_error(&upload.key, e))??);
            }
        }
        Ok(())
    }

    /// A range too small to be a part of its own, read to be uploaded with its neighbours.
    async fn download(&self, range: &CopyRange) -> Result<Bytes, StoreError> {
        read_range(self, range).await
    }
}
