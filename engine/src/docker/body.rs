//! Request bodies streamed from a reader, aborted (and truncated before the archive's end) when
//! the reader fails: what makes a failed pull load nothing.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use s3dock_core::store::BoxReader;
use tokio_util::io::ReaderStream;

/// Chunk size for request bodies streamed from a [`BoxReader`].
const BODY_CHUNK: usize = 256 * 1024;

/// The first read error of a request body, kept for the caller: hyper only reports that "the
/// body stream failed", and the caller needs to know it was *its* input, not the engine.
pub(super) type InputFailure = Arc<Mutex<Option<io::Error>>>;

/// How many trailing bytes of an upload are held back until the input ends cleanly: more than
/// a tar's end-of-archive marker (two zero blocks) plus the padding of a 10 KiB tar record.
const HOLD_BACK: usize = 64 * 1024;

/// Forwards a byte stream but keeps its last [`HOLD_BACK`] bytes until the stream ends without
/// error.
///
/// Aborting the request alone is not enough to make the engine load nothing: an engine that
/// reads the archive with a tar reader stops at the end-of-archive marker, so if every byte had
/// been sent before the input failed (the pull path's checksum check fails *at* the end), it
/// could finish loading without ever noticing the aborted upload. Holding the tail back means
/// the engine never sees the end of the archive unless the input ended cleanly, so a failed
/// input always leaves it with a truncated archive.
struct HoldBackTail<S> {
    inner: S,
    tail: bytes::BytesMut,
    ended: bool,
}

impl<S> HoldBackTail<S> {
    fn new(inner: S) -> Self {
        HoldBackTail { inner, tail: bytes::BytesMut::new(), ended: false }
    }
}

impl<S: Stream<Item = io::Result<Bytes>> + Unpin> Stream for HoldBackTail<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready((!this.tail.is_empty()).then(|| Ok(this.tail.split().freeze())));
            }
            match futures::ready!(this.inner.poll_next_unpin(cx)) {
                None => this.ended = true,
                Some(Err(e)) => {
                    // The held tail is never sent: the upload stays truncated.
                    this.tail.clear();
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(chunk)) => {
                    this.tail.extend_from_slice(&chunk);
                    if this.tail.len() > HOLD_BACK {
                        let ready = this.tail.len() - HOLD_BACK;
                        return Poll::Ready(Some(Ok(this.tail.split_to(ready).freeze())));
                    }
                }
            }
        }
    }
}

/// A request body streamed from `reader`, remembering the first read error. Yielding that error
/// makes hyper abort the request (no terminating chunk), which the engine sees as a truncated
/// upload; with the tail held back ([`HoldBackTail`]) it is truncated before the end of the
/// archive, whatever the engine's way of reading it.
pub(super) fn guarded_body(
    reader: BoxReader,
) -> (impl Stream<Item = io::Result<Bytes>> + Send + 'static, InputFailure) {
    let failure: InputFailure = Arc::new(Mutex::new(None));
    let slot = failure.clone();
    let body = ReaderStream::with_capacity(reader, BODY_CHUNK).map_err(move |e| {
        let copy = io::Error::new(e.kind(), e.to_string());
        slot.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(e);
        copy
    });
    (HoldBackTail::new(body), failure)
}

pub(super) fn take_failure(failure: &InputFailure) -> Option<io::Error> {
    failure.lock().unwrap_or_else(PoisonError::into_inner).take()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize, size: usize) -> Vec<io::Result<Bytes>> {
        (0..n).map(|i| Ok(Bytes::from(vec![i as u8; size]))).collect()
    }

    #[tokio::test]
    async fn the_tail_is_sent_only_after_a_clean_end() {
        let input = chunks(10, 20_000);
        let total: usize = 10 * 20_000;
        let mut held = HoldBackTail::new(futures::stream::iter(input));
        let mut sent = Vec::new();
        while let Some(chunk) = held.next().await {
            sent.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(sent.len(), total);
        assert_eq!(sent[total - 1], 9);

        // The input fails after its last byte: everything but the held tail went out.
        let mut input = chunks(10, 20_000);
        input.push(Err(io::Error::other("checksum mismatch")));
        let mut held = HoldBackTail::new(futures::stream::iter(input));
        let mut sent = 0;
        let mut failed = false;
        while let Some(chunk) = held.next().await {
            match chunk {
                Ok(c) => sent += c.len(),
                Err(e) => {
                    assert_eq!(e.to_string(), "checksum mismatch");
                    failed = true;
                }
            }
        }
        assert!(failed);
        assert_eq!(sent, total - HOLD_BACK);

        // A short input is held whole until it ends.
        let mut held =
            HoldBackTail::new(futures::stream::iter(vec![Ok(Bytes::from_static(b"abc")), Err(io::Error::other("x"))]));
        assert!(held.next().await.unwrap().is_err());
        assert!(held.next().await.is_none());
    }
}
