//! Downloading some ranges of an indexed archive: what a host that already has some of an
//! image's layers fetches (ranged GETs), checked range by range against the index.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

use super::check::RangeChecker;
use super::index::IndexRange;
use crate::names::ObjectKey;
use crate::store::{BoxReader, ETag, GetOptions, ObjectStore};
use crate::transfer::{MAX_RESUMES, Progress};

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Streams the given ranges of `key` (in object order), one ranged GET per run of adjacent
/// ranges, pinned to `etag`, resuming interrupted reads. The reader fails with `InvalidData`
/// as soon as a range's bytes do not match its digest, and never ends cleanly unless every
/// range was read whole and matched. `progress` counts bytes downloaded.
pub fn ranged_download(
    store: Arc<dyn ObjectStore>,
    key: ObjectKey,
    etag: Option<ETag>,
    mut ranges: Vec<IndexRange>,
    progress: Progress,
) -> BoxReader {
    ranges.sort_by_key(|r| r.offset);
    ranges.dedup_by_key(|r| r.offset);
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        if let Err(e) = pump(&*store, &key, etag, ranges, &progress, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(StreamReader::new(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) })))
}

/// Runs of adjacent ranges: `(start, end)`.
fn runs(ranges: &[IndexRange]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some((_, end)) if *end == r.offset => *end += r.length,
            _ => out.push((r.offset, r.offset + r.length)),
        }
    }
    out
}

async fn pump(
    store: &dyn ObjectStore,
    key: &ObjectKey,
    etag: Option<ETag>,
    ranges: Vec<IndexRange>,
    progress: &Progress,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    let mut checker = RangeChecker::new(ranges.clone());
    let mut resumes = 0u32;
    for (start, end) in runs(&ranges) {
        let mut pos = start;
        'run: while pos < end {
            let opts = GetOptions { offset: pos, length: Some(end - pos), if_match: etag.clone(), version_id: None };
            let obj = match store.get(key, opts).await {
                Ok(o) => o,
                Err(e) if e.is_retryable() && resumes < MAX_RESUMES => {
                    resumes += 1;
                    tokio::time::sleep(Duration::from_millis(200 << resumes)).await;
                    continue;
                }
                Err(e) if e.is_precondition_failed() => {
                    return Err(invalid(format!(
                        "{key} was replaced while it was being downloaded; run the command again"
                    )));
                }
                Err(e) if e.is_not_found() => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{key} was deleted while it was being downloaded; run the command again"),
                    ));
                }
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            };
            let mut body = obj.body.take(end - pos);
            loop {
                let mut buf = BytesMut::with_capacity(256 * 1024);
                match body.read_buf(&mut buf).await {
                    Ok(0) if pos < end => {
                        if resumes >= MAX_RESUMES {
                            return Err(invalid(format!(
                                "{key} ended at byte {pos}, before the {end} its index lists"
                            )));
                        }
                        resumes += 1;
                        continue 'run;
                    }
                    Ok(0) => break 'run,
                    Ok(n) => {
                        let chunk = buf.freeze();
                        checker.feed(&chunk).map_err(|e| invalid(format!("{key}: {e}")))?;
                        pos += n as u64;
                        progress.add(n as u64);
                        if tx.send(Ok(chunk)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) if resumes < MAX_RESUMES => {
                        resumes += 1;
                        tracing::warn!(key = %key, offset = pos, error = %e, "download interrupted; resuming");
                        tokio::time::sleep(Duration::from_millis(200 << resumes)).await;
                        continue 'run;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    checker.finish().map_err(|e| invalid(format!("{key}: {e}")))
}
