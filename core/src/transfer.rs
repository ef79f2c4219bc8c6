//! Streaming transfers: downloads that verify as they go, byte counters for progress bars.
//!
//! The pull path is `download (hash) -> gunzip -> docker load`, one pass, no temp file. The
//! digests are only known at the end of the download, so the end is what carries the verdict:
//! [`verified_download`] turns its EOF into an error when size, MD5 or SHA-256 disagree with the
//! metadata. The engine's `load_image` withholds the end of its upload until its input ended
//! cleanly, so a mismatch reaches `docker load` as an aborted upload and nothing is loaded.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Future, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::digest::{Digests, verify};
use crate::docs::ImageMetadata;
use crate::names::ObjectKey;
use crate::store::{BoxReader, ETag, GetOptions, ObjectStore, StoreError};

/// How many times an interrupted download resumes before giving up.
pub const MAX_RESUMES: u32 = 5;

/// Progress of a transfer, shared with a progress bar: bytes so far and the expected total
/// (0 while unknown; for an export it is an estimate).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    bytes: Arc<std::sync::atomic::AtomicU64>,
    total: Arc<std::sync::atomic::AtomicU64>,
}

impl Progress {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn add(&self, n: u64) {
        self.bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn total(&self) -> u64 {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn set_total(&self, n: u64) {
        self.total.store(n, std::sync::atomic::Ordering::Relaxed);
    }
}

fn io_err(kind: std::io::ErrorKind, msg: String) -> std::io::Error {
    std::io::Error::new(kind, msg)
}

/// Streams `key`, verifying it against `meta` at the end, resuming interrupted reads with
/// ranged GETs pinned to the ETag first seen (a resumed read never splices two objects).
///
/// The returned reader yields the object's bytes and then either EOF (verified) or an
/// `InvalidData` error naming the mismatch; deletion or replacement mid-download is an error
/// that says so. `progress` counts bytes delivered.
pub fn verified_download(
    store: Arc<dyn ObjectStore>,
    key: ObjectKey,
    meta: ImageMetadata,
    expected_etag: Option<ETag>,
    progress: Progress,
) -> BoxReader {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        let result = pump(&*store, &key, &meta, expected_etag, &progress, &tx).await;
        match result {
            Ok(()) => {}
            Err(e) => {
                let _ = tx.send(Err(e)).await;
            }
        }
        // Dropping `tx` ends the stream: after an error the reader sees the error first.
    });
    Box::pin(StreamReader::new(ChannelStream(rx)))
}

struct ChannelStream(mpsc::Receiver<std::io::Result<Bytes>>);

impl Stream for ChannelStream {
    type Item = std::io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

async fn pump(
    store: &dyn ObjectStore,
    key: &ObjectKey,
    meta: &ImageMetadata,
    mut etag: Option<ETag>,
    progress: &Progress,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    let gone = |e: StoreError| -> std::io::Error {
        match e {
            StoreError::NotFound { .. } => io_err(
                std::io::ErrorKind::NotFound,
                format!("{key} was deleted while it was being downloaded; run the command again"),
            ),
            StoreError::PreconditionFailed { .. } => io_err(
                std::io::ErrorKind::InvalidData,
                format!("{key} was replaced while it was being downloaded; run the command again"),
            ),
            other => io_err(std::io::ErrorKind::Other, other.to_string()),
        }
    };
    let (mut md5, mut sha256) = (Md5::new(), Sha256::new());
    // An indexed archive is also checked range by range; a composed one only that way.
    let mut ranges = meta.layers.as_ref().map(|l| crate::layers::check::RangeChecker::new(l.ranges.clone()));
    let mut offset = 0u64;
    let mut resumes = 0u32;
    'outer: loop {
        let obj = match store.get(key, GetOptions { offset, if_match: etag.clone(), ..Default::default() }).await {
            Ok(o) => o,
            Err(e) if e.is_retryable() && resumes < MAX_RESUMES => {
                resumes += 1;
                tracing::warn!(key = %key, error = %e, attempt = resumes, "download failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 << resumes)).await;
                continue;
            }
            Err(e) => return Err(gone(e)),
        };
        if etag.is_none() {
            etag = Some(obj.info.etag.clone());
        }
        let mut body = obj.body;
        let mut buf = BytesMut::with_capacity(256 * 1024);
        loop {
            buf.clear();
            buf.reserve(256 * 1024);
            match body.read_buf(&mut buf).await {
                Ok(0) => break 'outer,
                Ok(n) if offset + n as u64 > meta.size => {
                    // Never read past what the metadata promises: an object larger than that is
                    // not the archive it describes, however it ends.
                    return Err(io_err(
                        std::io::ErrorKind::InvalidData,
                        format!("{key} is larger than the {} bytes its metadata records; re-push the image", meta.size),
                    ));
                }
                Ok(n) => {
                    let chunk = buf.split().freeze();
                    md5.update(&chunk);
                    sha256.update(&chunk);
                    if let Some(r) = &mut ranges {
                        r.feed(&chunk).map_err(|e| io_err(std::io::ErrorKind::InvalidData, format!("{key}: {e}")))?;
                    }
                    offset += n as u64;
                    progress.add(n as u64);
                    if tx.send(Ok(chunk)).await.is_err() {
                        // The consumer went away: stop quietly.
                        return Ok(());
                    }
                }
                Err(e) if resumes < MAX_RESUMES && is_transient(&e) => {
                    resumes += 1;
                    tracing::warn!(key = %key, offset, error = %e, attempt = resumes, "download interrupted; resuming");
                    tokio::time::sleep(Duration::from_millis(200 << resumes)).await;
                    continue 'outer;
                }
                Err(e) => return Err(e),
            }
        }
    }
    let actual = Digests { md5: hex::encode(md5.finalize()), sha256: hex::encode(sha256.finalize()), size: offset };
    if let Some(r) = &ranges {
        r.finish().map_err(|e| io_err(std::io::ErrorKind::InvalidData, format!("{key}: {e}")))?;
    }
    if meta.is_composed() {
        // Every byte was checked against the range digests; the whole-object ones are not known.
        return Ok(());
    }
    verify(meta.into(), &actual).map_err(|e| io_err(std::io::ErrorKind::InvalidData, format!("{key}: {e}")))?;
    Ok(())
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | UnexpectedEof | TimedOut | BrokenPipe | Interrupted | Other
    )
}

/// Counts the bytes read through `inner` into `progress`.
pub fn counting(inner: BoxReader, progress: Progress) -> BoxReader {
    Box::pin(Counting { inner, progress })
}

struct Counting {
    inner: BoxReader,
    progress: Progress,
}

impl AsyncRead for Counting {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = self.inner.as_mut().poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            self.progress.add((buf.filled().len() - before) as u64);
        }
        r
    }
}

/// Fails the stream with an error once `token` is cancelled. Cancelling through the data
/// path (rather than dropping the consumer's future) lets the consumer clean up: the S3 store
/// aborts its multipart upload on a body error, so an interrupted push leaves nothing behind.
pub fn cancellable(inner: BoxReader, token: tokio_util::sync::CancellationToken) -> BoxReader {
    Box::pin(Cancellable { inner, cancelled: Box::pin(token.cancelled_owned()) })
}

struct Cancellable {
    inner: BoxReader,
    cancelled: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl AsyncRead for Cancellable {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.cancelled.as_mut().poll(cx).is_ready() {
            // Not `ErrorKind::Interrupted`: readers retry that kind (it means EINTR), so the
            // stream would spin instead of ending.
            return Poll::Ready(Err(io_err(std::io::ErrorKind::Other, "interrupted by the user".into())));
        }
        self.inner.as_mut().poll_read(cx, buf)
    }
}

/// Keeps a copy of the first `limit` bytes that pass through, to sniff a stream's format
/// without buffering it.
pub fn tap_prefix(inner: BoxReader, limit: usize) -> (BoxReader, Arc<std::sync::Mutex<Vec<u8>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::with_capacity(limit)));
    (Box::pin(PrefixTap { inner, seen: seen.clone(), limit }), seen)
}

struct PrefixTap {
    inner: BoxReader,
    seen: Arc<std::sync::Mutex<Vec<u8>>>,
    limit: usize,
}

impl AsyncRead for PrefixTap {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = self.inner.as_mut().poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let limit = self.limit;
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let room = limit.saturating_sub(seen.len());
            if room > 0 {
                let new = &buf.filled()[before..];
                seen.extend_from_slice(&new[..new.len().min(room)]);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, faults::Faulty, read_to_vec};
    use crate::testing::seed_image;
    use chrono::Utc;

    fn image() -> crate::names::ImageRef {
        crate::names::ImageRef::parse("app:20250721-2118-f7a5a27").unwrap()
    }

    #[tokio::test]
    async fn a_cancelled_stream_ends_with_an_error_not_a_spin() {
        let token = tokio_util::sync::CancellationToken::new();
        let endless = Box::pin(tokio::io::repeat(7));
        let mut r = cancellable(endless, token.clone());
        let mut buf = vec![0u8; 1024];
        assert_eq!(r.read(&mut buf).await.unwrap(), 1024);
        token.cancel();
        let mut sink = Vec::new();
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), r.read_to_end(&mut sink))
            .await
            .expect("read_to_end returns instead of retrying forever")
            .unwrap_err();
        assert_ne!(e.kind(), std::io::ErrorKind::Interrupted);
    }

    #[tokio::test]
    async fn verified_download_passes_good_bytes_and_fails_bad_ones() {
        let store = Arc::new(MemoryStore::new());
        let img = image();
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let meta = seed_image(&*store, &img, &body, Utc::now()).await.unwrap();
        let key = crate::layout::image_archive(&img.app, &img.tag);
        let p = Progress::default();
        let got =
            read_to_vec(verified_download(store.clone(), key.clone(), meta.clone(), None, p.clone())).await.unwrap();
        assert_eq!(got, body);
        assert_eq!(p.bytes(), body.len() as u64);

        let mut bad = body.clone();
        bad[1_000_000] ^= 1;
        store.corrupt(&key, bad);
        let err = read_to_vec(verified_download(store.clone(), key.clone(), meta.clone(), None, Progress::default()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("md5"), "{err}");

        store.corrupt(&key, body[..body.len() - 10].to_vec());
        let err = read_to_vec(verified_download(store.clone(), key.clone(), meta.clone(), None, Progress::default()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("size"), "{err}");

        // Larger than promised: refused as soon as the promise is exceeded, not at the end.
        let mut huge = body.clone();
        huge.extend(std::iter::repeat_n(7u8, 20_000_000));
        store.corrupt(&key, huge);
        let p = Progress::default();
        let err = read_to_vec(verified_download(store.clone(), key, meta, None, p.clone())).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("larger than"), "{err}");
        assert!(p.bytes() <= body.len() as u64, "read {} bytes of a {}-byte promise", p.bytes(), body.len());
    }

    #[tokio::test]
    async fn interrupted_downloads_resume_and_deletions_are_named() {
        let inner = MemoryStore::new();
        let img = image();
        let body: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
        let meta = seed_image(&inner, &img, &body, Utc::now()).await.unwrap();
        let store = Arc::new(Faulty::new(inner));
        let key = crate::layout::image_archive(&img.app, &img.tag);
        store.cut_body(".tar.gz", 700_000, 2);
        let got = read_to_vec(verified_download(store.clone(), key.clone(), meta.clone(), None, Progress::default()))
            .await
            .unwrap();
        assert_eq!(got, body);

        // Deleted between reading the metadata and downloading.
        store.inner().delete(&key).await.unwrap();
        let err =
            read_to_vec(verified_download(store.clone(), key, meta, None, Progress::default())).await.unwrap_err();
        assert!(err.to_string().contains("was deleted"), "{err}");
    }
}
