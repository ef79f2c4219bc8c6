//! Composed objects: an object written as a sequence of pieces, some uploaded, some copied from
//! byte ranges of objects the store already holds (see [`ObjectStore::compose`]).
//!
//! A layered push uses it to reuse the compressed layers earlier pushes left in the bucket:
//! each copied range is read (or, on S3, copied on the server) only while its source still has
//! the ETag the push planned with, so a composed object never splices two versions of a source.
//! The new object is a full, independent copy: nothing refers back to its sources.

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

use super::{BoxReader, ETag, GetOptions, ObjectInfo, ObjectStore, PutOptions, StoreError};
use crate::names::ObjectKey;

/// A byte range of an existing object, pinned to its ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRange {
    pub key: ObjectKey,
    pub etag: ETag,
    pub offset: u64,
    pub length: u64,
}

/// One piece of a composed object.
#[derive(Debug, Clone)]
pub enum Piece {
    /// Bytes to upload.
    Data(Bytes),
    /// A range to copy from an object the store holds.
    Copy(CopyRange),
}

/// The pieces of a composed object, in order. An `Err` item aborts the write.
pub type PieceStream = futures::stream::BoxStream<'static, std::io::Result<Piece>>;

/// A stream of pieces known in advance.
pub fn stream_of(pieces: Vec<std::io::Result<Piece>>) -> PieceStream {
    Box::pin(futures::stream::iter(pieces))
}

/// The next piece of a stream (for stores outside this crate, without a `futures` import).
pub async fn next_piece(pieces: &mut PieceStream) -> Option<std::io::Result<Piece>> {
    pieces.next().await
}

/// The error a copy source that changed or vanished turns into: retryable, since a push that
/// meets it falls back to uploading everything.
pub fn source_changed(range: &CopyRange, detail: &str) -> StoreError {
    StoreError::other(
        format!(
            "{} changed or disappeared while a range of it was being reused ({detail}); nothing was written",
            range.key
        ),
        true,
    )
}

/// Reads `range` whole (it must hold exactly `range.length` bytes), only while its source
/// still has the ETag given.
pub async fn read_range<S: ObjectStore + ?Sized>(store: &S, range: &CopyRange) -> Result<Bytes, StoreError> {
    let opts = GetOptions {
        offset: range.offset,
        length: Some(range.length),
        if_match: Some(range.etag.clone()),
        version_id: None,
    };
    let obj = match store.get(&range.key, opts).await {
        Ok(o) => o,
        Err(e) if e.is_not_found() || e.is_precondition_failed() => return Err(source_changed(range, &e.to_string())),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::with_capacity(range.length.min(64 << 20) as usize);
    obj.body
        .take(range.length)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| StoreError::io(format!("reading a range of {}", range.key), e))?;
    if buf.len() as u64 != range.length {
        return Err(source_changed(range, &format!("{} bytes where {} were expected", buf.len(), range.length)));
    }
    Ok(Bytes::from(buf))
}

/// The portable way to compose: read each range and write the whole through
/// [`ObjectStore::put_stream`], streaming (memory stays bounded by the range chunks).
pub async fn by_reading<S: ObjectStore + ?Sized>(
    store: &S,
    key: &ObjectKey,
    mut pieces: PieceStream,
    opts: PutOptions,
) -> Result<ObjectInfo, StoreError> {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let body: BoxReader = Box::pin(StreamReader::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })));
    let source_error = std::sync::Mutex::new(None::<StoreError>);
    let feed = async {
        let tx = tx;
        while let Some(piece) = pieces.next().await {
            let sent = match piece {
                Ok(Piece::Data(b)) => tx.send(Ok(b)).await.is_ok(),
                Ok(Piece::Copy(range)) => match read_chunks(store, &range, &tx).await {
                    Ok(()) => true,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        *source_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        false
                    }
                },
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    false
                }
            };
            if !sent {
                return;
            }
        }
    };
    let ((), put) = tokio::join!(feed, store.put_stream(key, body, opts));
    match (source_error.into_inner().unwrap_or_else(|p| p.into_inner()), put) {
        (Some(e), Err(_)) => Err(e),
        (_, r) => r,
    }
}

/// Streams `range` into `tx` in chunks.
async fn read_chunks<S: ObjectStore + ?Sized>(
    store: &S,
    range: &CopyRange,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> Result<(), StoreError> {
    let opts = GetOptions {
        offset: range.offset,
        length: Some(range.length),
        if_match: Some(range.etag.clone()),
        version_id: None,
    };
    let obj = match store.get(&range.key, opts).await {
        Ok(o) => o,
        Err(e) if e.is_not_found() || e.is_precondition_failed() => return Err(source_changed(range, &e.to_string())),
        Err(e) => return Err(e),
    };
    let mut body = obj.body.take(range.length);
    let mut left = range.length;
    while left > 0 {
        let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
        let n = body
            .read_buf(&mut buf)
            .await
            .map_err(|e| StoreError::io(format!("reading a range of {}", range.key), e))?;
        if n == 0 {
            return Err(source_changed(range, &format!("it ended {left} bytes short")));
        }
        left -= n as u64;
        if tx.send(Ok(buf.freeze())).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}
