//! Streaming gzip for image archives: parallel compression for pushes, multi-member
//! decompression for pulls, both with memory bounded independently of the archive's size.
//!
//! [`compress`] cuts its input into fixed-size blocks and deflates each one on a blocking
//! thread as a complete, independent gzip member; the members are emitted in input order, so
//! the output is one valid gzip file (RFC 1952 allows any number of members, and `gunzip`,
//! Go's `compress/gzip` behind `docker load` and flate2's `MultiGzDecoder` all read them).
//! Blocks do not share a dictionary, which costs a fraction of a percent of ratio with blocks
//! of a megabyte or more and lets the work spread over every core. `docs/compression.md`
//! records the measurements behind [`GzipOptions::default`].
//!
//! [`decompress`] inflates on one blocking thread and hands decoded chunks over a small
//! bounded channel. It reads its input through to EOF and fails on anything that is not a
//! sequence of complete, checksummed members, so a cut or damaged download never ends as a
//! clean EOF. One cut gzip cannot see: a stream truncated exactly between two members is
//! itself valid gzip. That is what the archive's size and digests (checked by the caller
//! with [`crate::digest`]) are for.
//!
//! Both sides send their output through a channel that ends with an explicit `End`: a worker
//! that dies or is cancelled closes the channel without it, and the reader reports an error
//! instead of EOF.

use std::future::Future;
use std::io::{self, BufRead, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use flate2::{Compression, GzBuilder};
use futures::Stream;
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::store::BoxReader;

/// How [`compress`] works. Memory in flight is about `(threads + 2) * block_size * 2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GzipOptions {
    /// Deflate level, 0 (store) to 9 (smallest); higher values are treated as 9.
    pub level: u32,
    /// Blocks compressed at once; 0 is treated as 1.
    pub threads: usize,
    /// Bytes of input per gzip member; 0 is treated as 1.
    pub block_size: usize,
}

/// The most compression threads [`GzipOptions::default`] uses, whatever the core count: past
/// this the upload, not the compressor, is the bottleneck, and each thread costs memory.
pub const MAX_DEFAULT_THREADS: usize = 8;

impl Default for GzipOptions {
    /// Level 3, one thread per core (up to [`MAX_DEFAULT_THREADS`]), 1 MiB blocks: the knee
    /// of the speed/size curve measured in `docs/compression.md`.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        GzipOptions { level: 3, threads: cores.min(MAX_DEFAULT_THREADS), block_size: 1 << 20 }
    }
}

/// Compresses `input` into gzip, block by block in parallel (see the module doc).
///
/// Nothing happens until the returned reader is first read. Errors reading `input` reach the
/// returned reader after the data before them; dropping the returned reader drops `input`
/// and stops the work (blocks already being compressed finish and are discarded).
pub fn compress(input: BoxReader, opts: GzipOptions) -> BoxReader {
    compress_with(input, opts, compress_member)
}

/// How one block becomes one member; a parameter so tests can watch the workers.
type Encode = fn(&[u8], Compression) -> io::Result<Bytes>;

fn compress_with(input: BoxReader, opts: GzipOptions, encode: Encode) -> BoxReader {
    let opts =
        GzipOptions { level: opts.level.min(9), threads: opts.threads.max(1), block_size: opts.block_size.max(1) };
    let start = move || {
        // The queue holds `threads + 2` jobs: with the one the reader is emitting and the one
        // the producer holds, `threads + 4` blocks exist at most. Only `threads` of them are
        // being compressed (input and output, two blocks' worth each); the others are either
        // read and waiting, or compressed and waiting to be emitted (one block's worth each),
        // hence memory of about `(threads + 2) * block_size * 2`. The two extra jobs let
        // compression run on past a slow block that holds up the emitting order.
        let (tx, rx) = mpsc::channel(opts.threads + 2);
        let producer = tokio::spawn(produce_members(input, opts, encode, tx));
        (rx, Some(producer.abort_handle()))
    };
    Box::pin(StreamReader::new(Pieces::new("compressor", start)))
}

/// Reads blocks and starts their compression, queueing the jobs in input order.
async fn produce_members(mut input: BoxReader, opts: GzipOptions, encode: Encode, tx: mpsc::Sender<Piece<MemberJob>>) {
    let level = Compression::new(opts.level);
    let running = Arc::new(Semaphore::new(opts.threads));
    let mut first = true;
    loop {
        // Read the next block while earlier ones are being compressed: with one thread this
        // still overlaps reading and compressing.
        let block = match read_block(&mut input, opts.block_size).await {
            Ok(block) => block,
            Err(e) => {
                let _ = tx.send(Piece::Fail(e)).await;
                return;
            }
        };
        let at_eof = block.len() < opts.block_size;
        // An empty input still becomes one (empty) member: zero bytes are not valid gzip.
        if block.is_empty() && !first {
            break;
        }
        first = false;
        let (running, reader) = (running.clone(), tx.clone());
        let runtime = tokio::runtime::Handle::current();
        let job = tokio::task::spawn_blocking(move || {
            // At most `threads` compressions at once. The job waits for its turn here (parking
            // a blocking-pool thread) rather than the producer waiting before spawning it, so
            // the next blocks are already read and waiting: when a compression ends the next
            // one starts at once, instead of after the producer task and its read get
            // scheduled on busy cores (which left a fifth of the CPU idle with one thread per
            // core). The order jobs start in does not matter; the channel orders the output.
            // The semaphore is never closed.
            let Ok(_permit) = runtime.block_on(running.acquire_owned()) else {
                return Err(io::Error::other("the gzip compressor was shut down"));
            };
            if reader.is_closed() {
                return Err(io::Error::other("nobody reads the gzip output any more"));
            }
            encode(&block, level)
        });
        // The channel's order is the output's order, whatever order the jobs finish in.
        if tx.send(Piece::Chunk(MemberJob(job))).await.is_err() {
            return; // The reader was dropped.
        }
        if at_eof {
            break;
        }
    }
    let _ = tx.send(Piece::End).await;
}

/// Reads up to `size` bytes, fewer only at EOF. The buffer is never grown past `size`.
async fn read_block(input: &mut BoxReader, size: usize) -> io::Result<Vec<u8>> {
    let mut block = Vec::with_capacity(size);
    while block.len() < size {
        // `read_buf` fills the spare capacity, which is exactly what is left of the block.
        match input.read_buf(&mut block).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(block)
}

/// One complete gzip member. The header's mtime is zero and no name is stored, so identical
/// input gives identical output.
fn compress_member(block: &[u8], level: Compression) -> io::Result<Bytes> {
    // Image layers compress to well under half; a member that does not fit regrows once.
    let out = Vec::with_capacity(block.len() / 2 + 64);
    let mut encoder = GzBuilder::new().mtime(0).write(out, level);
    encoder.write_all(block)?;
    Ok(Bytes::from(encoder.finish()?))
}

/// A compression job, as a future of its member.
struct MemberJob(JoinHandle<io::Result<Bytes>>);

impl Future for MemberJob {
    type Output = io::Result<Bytes>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(Pin::new(&mut self.0).poll(cx)) {
            Ok(member) => member,
            // Blocking jobs are never aborted, so this is a panic in the encoder.
            Err(e) => Err(io::Error::other(format!("a gzip compression thread failed: {e}"))),
        })
    }
}

/// Decompresses a gzip stream of one or more members (see the module doc).
///
/// Fails with `UnexpectedEof` if the stream is cut inside a member, with `InvalidData` if it is
/// damaged, is not gzip, or has anything but members after the last one; errors reading
/// `input` come through unchanged. Nothing happens until the returned reader is first read.
pub fn decompress(input: BoxReader) -> BoxReader {
    decompress_limited(input, u64::MAX)
}

/// [`decompress`], failing with `InvalidData` as soon as the output exceeds `limit` bytes: an
/// archive must not decompress to more than its metadata records (a gzip bomb, or metadata
/// that lies), so a pull never fills a disk with what it was not promised.
pub fn decompress_limited(input: BoxReader, limit: u64) -> BoxReader {
    let start = move || {
        let (tx, rx) = mpsc::channel(DECODED_QUEUE);
        // The bridge must be made inside the runtime (it keeps its handle); `start` runs on
        // the first read, so it is.
        let bridge = SyncIoBridge::new(input);
        // A blocking task cannot be aborted: a dropped reader stops it at its next send.
        tokio::task::spawn_blocking(move || inflate(bridge, tx, limit));
        (rx, None)
    };
    Box::pin(StreamReader::new(Pieces::new("decompressor", start)))
}

/// Decoded bytes per chunk sent to the reader.
const DECODED_CHUNK: usize = 128 * 1024;
/// Decoded chunks queued for the reader; with the input buffer, about 1 MiB in flight.
const DECODED_QUEUE: usize = 8;
/// Compressed bytes read from the input at a time.
const INPUT_BUFFER: usize = 64 * 1024;

fn inflate(input: impl Read, tx: mpsc::Sender<Piece<std::future::Ready<io::Result<Bytes>>>>, limit: u64) {
    let send = |piece| tx.blocking_send(piece).is_ok();
    let data = |chunk: &[u8]| Piece::Chunk(std::future::ready(Ok(Bytes::copy_from_slice(chunk))));
    let mut decoder =
        flate2::bufread::MultiGzDecoder::new(io::BufReader::with_capacity(INPUT_BUFFER, Tracked::new(input)));
    let mut buf = vec![0u8; DECODED_CHUNK];
    let mut total = 0u64;
    loop {
        match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total = total.saturating_add(n as u64);
                if total > limit {
                    send(Piece::Fail(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the image archive decompresses to more than the {limit} bytes its metadata records; re-push the image"
                        ),
                    )));
                    return;
                }
                if !send(data(&buf[..n])) {
                    return; // The reader was dropped.
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let failed_input = decoder.get_ref().get_ref().failed;
                send(Piece::Fail(if failed_input { e } else { invalid_gzip(e) }));
                return;
            }
        }
    }
    // flate2 ends a multi-member stream only once a refill of its buffer comes back empty, so
    // the input is at EOF here. Check it anyway: the caller hashes the compressed stream as it
    // is read, and a digest is only published at EOF, so a stream left unread would never
    // verify. Anything after the last member (padding, a second archive) is refused rather
    // than ignored, since what was loaded would not be all that was stored.
    let end = match decoder.get_mut().fill_buf() {
        Ok([]) => Piece::End,
        Ok(_) => Piece::Fail(invalid_gzip(io::Error::new(io::ErrorKind::InvalidData, "data after the last member"))),
        Err(e) => Piece::Fail(e),
    };
    send(end);
}

/// Says what a gzip error means for an image archive. A cut stream keeps `UnexpectedEof`
/// (a new download may well succeed); anything else is `InvalidData`.
fn invalid_gzip(e: io::Error) -> io::Error {
    let kind = match e.kind() {
        io::ErrorKind::UnexpectedEof => io::ErrorKind::UnexpectedEof,
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(
        kind,
        format!(
            "the image archive is not valid gzip ({e}): it is truncated or damaged; pull again, and if it still fails re-push the image"
        ),
    )
}

/// Remembers whether the input itself failed, so its errors pass through unchanged instead
/// of being reported as bad gzip.
struct Tracked<R> {
    inner: R,
    failed: bool,
}

impl<R> Tracked<R> {
    fn new(inner: R) -> Self {
        Tracked { inner, failed: false }
    }
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| self.failed |= e.kind() != io::ErrorKind::Interrupted)
    }
}

/// What a worker sends to the reader. `End` is explicit so that a channel closed without it
/// (a worker that panicked or was cancelled) is an error, never a clean EOF.
enum Piece<F> {
    Chunk(F),
    Fail(io::Error),
    End,
}

type Start<F> = Box<dyn FnOnce() -> (mpsc::Receiver<Piece<F>>, Option<AbortHandle>) + Send>;

enum State<F> {
    Idle(Start<F>),
    Running {
        rx: mpsc::Receiver<Piece<F>>,
        /// The chunk being waited for: the head of the queue, so chunks leave in order.
        current: Option<F>,
        /// Aborted when the reader is dropped or done, which drops the worker's input.
        _worker: Option<AbortOnDrop>,
    },
    Finished,
    /// Every read after an error fails again: a caller that retries a read must not see EOF.
    Failed(io::ErrorKind, String),
}

/// The chunks of a worker's output, in order, as a stream for [`StreamReader`].
struct Pieces<F> {
    what: &'static str,
    state: State<F>,
}

impl<F> Pieces<F> {
    fn new(
        what: &'static str,
        start: impl FnOnce() -> (mpsc::Receiver<Piece<F>>, Option<AbortHandle>) + Send + 'static,
    ) -> Self {
        Pieces { what, state: State::Idle(Box::new(start)) }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<io::Result<Bytes>>> {
        self.state = State::Failed(e.kind(), e.to_string());
        Poll::Ready(Some(Err(e)))
    }
}

impl<F: Future<Output = io::Result<Bytes>> + Unpin> Stream for Pieces<F> {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Idle(_) => {
                    // Started on the first read, inside the runtime that reads.
                    this.state = match std::mem::replace(&mut this.state, State::Finished) {
                        State::Idle(start) => {
                            let (rx, worker) = start();
                            State::Running { rx, current: None, _worker: worker.map(AbortOnDrop) }
                        }
                        other => other,
                    };
                }
                State::Running { rx, current, .. } => {
                    if let Some(chunk) = current {
                        let result = ready!(Pin::new(chunk).poll(cx));
                        *current = None;
                        return match result {
                            Ok(bytes) => Poll::Ready(Some(Ok(bytes))),
                            Err(e) => this.fail(e),
                        };
                    }
                    match ready!(rx.poll_recv(cx)) {
                        Some(Piece::Chunk(chunk)) => *current = Some(chunk),
                        Some(Piece::Fail(e)) => return this.fail(e),
                        Some(Piece::End) => {
                            this.state = State::Finished;
                            return Poll::Ready(None);
                        }
                        None => {
                            let what = this.what;
                            return this.fail(io::Error::other(format!(
                                "the gzip {what} stopped before the end of the stream"
                            )));
                        }
                    }
                }
                State::Finished => return Poll::Ready(None),
                State::Failed(kind, message) => return Poll::Ready(Some(Err(io::Error::new(*kind, message.clone())))),
            }
        }
    }
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests;
