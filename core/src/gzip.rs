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
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use tokio::io::{AsyncRead, ReadBuf};

    use super::*;
    use crate::digest::{HashingReader, digest_reader};
    use crate::store::{read_to_vec, reader_from_bytes};

    const BLOCK: usize = 16 * 1024;

    fn opts(threads: usize) -> GzipOptions {
        GzipOptions { level: 1, threads, block_size: BLOCK }
    }

    /// Incompressible bytes (xorshift), the same for the same seed.
    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Text-like bytes that compress well but not trivially.
    fn text_bytes(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 64);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(
                format!("{i:08} usr/lib/x86_64-linux-gnu/libfoo.so.{} rwxr-xr-x\n", i % 97).as_bytes(),
            );
            i += 1;
        }
        out.truncate(len);
        out
    }

    async fn gzip_bytes(data: &[u8], opts: GzipOptions) -> Vec<u8> {
        read_to_vec(compress(reader_from_bytes(data.to_vec()), opts)).await.unwrap()
    }

    async fn gunzip_bytes(data: &[u8]) -> io::Result<Vec<u8>> {
        read_to_vec(decompress(reader_from_bytes(data.to_vec()))).await
    }

    fn multi_gz_decode(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out).unwrap();
        out
    }

    /// What `compress` must produce: one member per block, in order.
    fn expected_members(data: &[u8], opts: GzipOptions) -> Vec<Bytes> {
        let level = Compression::new(opts.level);
        if data.is_empty() {
            return vec![compress_member(&[], level).unwrap()];
        }
        data.chunks(opts.block_size).map(|block| compress_member(block, level).unwrap()).collect()
    }

    /// Runs the system `gzip` (an essential package on Debian) on `data`.
    fn system_gzip(args: &[&str], data: &[u8]) -> std::process::Output {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("archive.tar.gz");
        std::fs::write(&path, data).unwrap();
        std::process::Command::new("gzip").args(args).arg(&path).output().expect("the gzip command is installed")
    }

    /// Yields `data`, then fails with `ConnectionReset` instead of EOF.
    struct FailingAfter {
        data: Vec<u8>,
        pos: usize,
    }

    impl AsyncRead for FailingAfter {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            if self.pos == self.data.len() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer")));
            }
            let n = (self.data.len() - self.pos).min(buf.remaining()).min(1000);
            let start = self.pos;
            buf.put_slice(&self.data[start..start + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    /// An endless (or `limit`-long) repetition of `pattern` that counts the bytes taken from
    /// it and says when it was dropped.
    struct Generator {
        pattern: Arc<[u8]>,
        pos: u64,
        limit: Option<u64>,
        taken: Arc<AtomicU64>,
        dropped: Arc<AtomicBool>,
    }

    impl Generator {
        fn new(pattern: Vec<u8>, limit: Option<u64>) -> Self {
            Generator { pattern: pattern.into(), pos: 0, limit, taken: Arc::default(), dropped: Arc::default() }
        }
    }

    impl AsyncRead for Generator {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let len = self.pattern.len() as u64;
            let left = self.limit.map_or(u64::MAX, |l| l - self.pos);
            let at = (self.pos % len) as usize;
            let n = (self.pattern.len() - at).min(buf.remaining()).min(left.min(usize::MAX as u64) as usize);
            buf.put_slice(&self.pattern[at..at + n]);
            self.pos += n as u64;
            self.taken.fetch_add(n as u64, Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
    }

    impl Drop for Generator {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    /// Waits up to 10 s for `cond`: long enough for a loaded machine, and a hang is a failure.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting until {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trips_at_block_edges() {
        for threads in [1, 2, 3] {
            for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 7 * BLOCK + 123] {
                for data in [random_bytes(len, len as u64), text_bytes(len)] {
                    let gz = gzip_bytes(&data, opts(threads)).await;
                    let case = format!("{len} bytes, {threads} threads");
                    assert_eq!(gz, expected_members(&data, opts(threads)).concat(), "{case}: members in input order");
                    assert_eq!(multi_gz_decode(&gz), data, "{case}: flate2");
                    assert_eq!(gunzip_bytes(&gz).await.unwrap(), data, "{case}: decompress");
                }
            }
        }
    }

    #[tokio::test]
    async fn system_gzip_reads_the_output() {
        for data in [Vec::new(), random_bytes(5 * BLOCK + 77, 5), text_bytes(5 * BLOCK + 77)] {
            let gz = gzip_bytes(&data, opts(2)).await;
            let test = system_gzip(&["-t"], &gz);
            assert!(test.status.success(), "gzip -t: {}", String::from_utf8_lossy(&test.stderr));
            let decoded = system_gzip(&["-dc"], &gz);
            assert!(decoded.status.success(), "gzip -dc: {}", String::from_utf8_lossy(&decoded.stderr));
            assert_eq!(decoded.stdout, data);
        }
    }

    #[tokio::test]
    async fn empty_input_is_one_empty_member() {
        let gz = gzip_bytes(&[], opts(2)).await;
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8], "a gzip header");
        assert_eq!(multi_gz_decode(&gz), b"");
        assert_eq!(gunzip_bytes(&gz).await.unwrap(), b"");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_is_deterministic() {
        let data = text_bytes(9 * BLOCK + 5);
        let one = gzip_bytes(&data, opts(1)).await;
        let three = gzip_bytes(&data, opts(3)).await;
        assert_eq!(one, three, "the thread count changes the schedule, never the bytes");
        assert_eq!(one, gzip_bytes(&data, opts(3)).await);
        assert_eq!(&one[4..8], &[0, 0, 0, 0], "mtime is zero");
    }

    #[tokio::test]
    async fn default_options_are_usable() {
        let d = GzipOptions::default();
        assert!((1..=9).contains(&d.level) && (1..=MAX_DEFAULT_THREADS).contains(&d.threads) && d.block_size > 0);
        let data = text_bytes(3 * d.block_size + 1);
        assert_eq!(multi_gz_decode(&gzip_bytes(&data, d).await), data);
    }

    #[tokio::test]
    async fn out_of_range_options_are_clamped() {
        let data = text_bytes(1000);
        let gz = gzip_bytes(&data, GzipOptions { level: 42, threads: 0, block_size: 0 }).await;
        assert_eq!(multi_gz_decode(&gz), data);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn input_errors_reach_the_reader_and_stay() {
        let input = FailingAfter { data: text_bytes(3 * BLOCK + 10), pos: 0 };
        let mut reader = compress(Box::pin(input), opts(2));
        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        // The complete blocks before the failure came out first.
        assert_eq!(multi_gz_decode(&out), text_bytes(3 * BLOCK));
        // A caller that reads again must not mistake the stream for complete.
        let again = reader.read(&mut [0u8; 10]).await.unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::ConnectionReset);
    }

    static RUNNING: AtomicU64 = AtomicU64::new(0);
    static MOST_RUNNING: AtomicU64 = AtomicU64::new(0);

    /// `compress_member`, slowed down, counting how many run at once (only the test below
    /// uses it, so the counters are its own).
    fn counted_member(block: &[u8], level: Compression) -> io::Result<Bytes> {
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        MOST_RUNNING.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        compress_member(block, level)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_threads_blocks_are_compressed_at_once() {
        let data = text_bytes(12 * BLOCK);
        let gz = read_to_vec(compress_with(reader_from_bytes(data.clone()), opts(2), counted_member)).await.unwrap();
        assert_eq!(multi_gz_decode(&gz), data);
        let most = MOST_RUNNING.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} blocks compressed at once");
    }

    #[tokio::test]
    async fn a_worker_that_stops_without_end_is_an_error() {
        let (tx, rx) = mpsc::channel(4);
        let data = |b: &'static [u8]| Piece::Chunk(std::future::ready(Ok(Bytes::from_static(b))));
        tx.try_send(data(b"partial ")).unwrap();
        tx.try_send(data(b"output")).unwrap();
        drop(tx); // As a panicking or cancelled worker would, without sending `End`.
        let mut reader = StreamReader::new(Pieces::new("test worker", move || (rx, None)));
        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).await.unwrap_err();
        assert_eq!(out, b"partial output");
        assert!(err.to_string().contains("stopped before the end"), "{err}");
        assert!(reader.read(&mut [0u8; 4]).await.is_err(), "still an error, never EOF");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_reader_stops_the_work() {
        let input = Generator::new(random_bytes(BLOCK, 1), None);
        let (taken, dropped) = (input.taken.clone(), input.dropped.clone());
        let mut reader = compress(Box::pin(input), opts(2));
        let mut buf = vec![0u8; 3 * BLOCK];
        reader.read_exact(&mut buf).await.unwrap();
        drop(reader);
        eventually("the input is dropped", || dropped.load(Ordering::SeqCst)).await;
        let after_drop = taken.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(taken.load(Ordering::SeqCst), after_drop);
    }

    /// The compressor reads ahead of its reader by at most `threads + 4` blocks, however long
    /// the stream: the blocks are the memory in flight. Every block of this input is the same,
    /// so the output's length tells exactly how many blocks the reader has consumed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_ahead_is_bounded() {
        let threads = 2;
        let block = 64 * 1024;
        let opts = GzipOptions { level: 1, threads, block_size: block };
        let pattern = text_bytes(4096);
        assert_eq!(block % pattern.len(), 0, "every block starts at the same place in the pattern");
        let member = compress_member(&pattern.repeat(block / pattern.len()), Compression::new(1)).unwrap().len();

        let input = Generator::new(pattern, None);
        let taken = input.taken.clone();
        let mut reader = compress(Box::pin(input), opts);
        let mut consumed = 0usize;
        let mut buf = vec![0u8; member];
        let bound = |consumed: usize| ((consumed / member + threads + 4) * block) as u64;

        // Stall the reader mid-member a few times: the compressor fills its queue, then stops.
        reader.read_exact(&mut buf[..member / 2]).await.unwrap();
        consumed += member / 2;
        for _ in 0..5 {
            let full = bound(consumed);
            eventually("the compressor fills its queue", || taken.load(Ordering::SeqCst) >= full).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(taken.load(Ordering::SeqCst), full, "read ahead after {consumed} bytes");
            reader.read_exact(&mut buf).await.unwrap();
            consumed += member;
        }
        // And while it streams freely.
        for _ in 0..500 {
            reader.read_exact(&mut buf[..member / 3]).await.unwrap();
            consumed += member / 3;
            assert!(taken.load(Ordering::SeqCst) <= bound(consumed), "read ahead after {consumed} bytes");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_stream_round_trip() {
        const LEN: u64 = 64 << 20;
        let pattern = [text_bytes(700_000), random_bytes(300_001, 9)].concat();
        let expected = digest_reader(Cyclic { pattern: &pattern, pos: 0 }.take(LEN)).unwrap();
        let compressed = compress(Box::pin(Generator::new(pattern, Some(LEN))), GzipOptions::default());
        let hashed = HashingReader::new(compressed);
        let archive = hashed.handle();
        let mut plain = HashingReader::new(decompress(Box::pin(hashed)));
        let content = plain.handle();
        tokio::io::copy(&mut plain, &mut tokio::io::sink()).await.unwrap();
        assert_eq!(content.digests(), Some(expected));
        let archive = archive.digests().expect("the decompressor read the archive to its end");
        assert!(archive.size < LEN / 2, "compressed to {} bytes", archive.size);
    }

    /// A blocking endless repetition of a pattern, to compute expected digests.
    struct Cyclic<'a> {
        pattern: &'a [u8],
        pos: usize,
    }

    impl Read for Cyclic<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = (self.pattern.len() - self.pos).min(buf.len());
            buf[..n].copy_from_slice(&self.pattern[self.pos..self.pos + n]);
            self.pos = (self.pos + n) % self.pattern.len();
            Ok(n)
        }
    }

    /// Small members, so every cut position can be tried.
    fn small_archive() -> (Vec<u8>, Vec<u8>, Vec<usize>) {
        let data = [text_bytes(1500), random_bytes(700, 3)].concat();
        let members: Vec<Bytes> =
            data.chunks(1000).map(|block| compress_member(block, Compression::new(6)).unwrap()).collect();
        let ends = members.iter().scan(0, |end, m| {
            *end += m.len();
            Some(*end)
        });
        (data, members.concat(), ends.collect())
    }

    #[tokio::test]
    async fn truncated_archives_fail() {
        let (data, gz, ends) = small_archive();
        for cut in 0..gz.len() {
            let result = gunzip_bytes(&gz[..cut]).await;
            if let Some(i) = ends.iter().position(|&end| end == cut) {
                // A cut between members is itself valid gzip: only the digests can tell.
                assert_eq!(result.unwrap(), data[..1000 * (i + 1)], "cut at member end {cut}");
            } else {
                let err = result.expect_err(&format!("cut at {cut} of {}", gz.len()));
                assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}: {err}");
                assert!(err.to_string().contains("re-push"), "{err}");
            }
        }
    }

    #[tokio::test]
    async fn damaged_archives_fail() {
        let (_, gz, ends) = small_archive();
        let starts: Vec<usize> = std::iter::once(0).chain(ends.iter().copied()).collect();
        for pos in 0..gz.len() {
            // mtime, extra flags and OS (header bytes 4..10) are informational and not
            // covered by any checksum; every other byte is checked.
            if starts.iter().any(|&s| (s + 4..s + 10).contains(&pos)) {
                continue;
            }
            let mut damaged = gz.clone();
            damaged[pos] ^= 0x55;
            let err = gunzip_bytes(&damaged).await.expect_err(&format!("byte {pos} damaged"));
            assert!(
                matches!(err.kind(), io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof),
                "byte {pos}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn data_after_the_last_member_is_refused() {
        let (_, gz, _) = small_archive();
        for trailer in [&b"garbage"[..], &[0u8; 512][..], &[0x1f, 0x8b][..], &[0x1f][..]] {
            let err = gunzip_bytes(&[&gz[..], trailer].concat()).await.expect_err("trailing data");
            assert!(err.to_string().contains("not valid gzip"), "{err}");
        }
    }

    #[tokio::test]
    async fn empty_or_foreign_input_fails() {
        assert_eq!(gunzip_bytes(b"").await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let err = gunzip_bytes(&text_bytes(5000)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn decompression_stops_at_its_limit() {
        let data = vec![0u8; 4 << 20];
        let gz = gzip_bytes(&data, GzipOptions::default()).await;
        let mut out = Vec::new();
        let err = decompress_limited(reader_from_bytes(gz.clone()), 1 << 20).read_to_end(&mut out).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("more than the 1048576 bytes"), "{err}");
        assert!(out.len() <= (1 << 20) + DECODED_CHUNK, "stopped near the limit, not at the end");
        let mut all = Vec::new();
        decompress_limited(reader_from_bytes(gz), data.len() as u64).read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), data.len(), "exactly the limit is fine");
    }

    #[tokio::test]
    async fn decompress_reads_its_input_to_the_end() {
        // A single-member archive from the system gzip, with a file name in its header.
        let data = text_bytes(300_000);
        let gz = system_gzip(&["-6", "-c"], &data);
        assert!(gz.status.success());
        let gz = gz.stdout;
        let hashed = HashingReader::new(reader_from_bytes(gz.clone()));
        let handle = hashed.handle();
        assert_eq!(read_to_vec(decompress(Box::pin(hashed))).await.unwrap(), data);
        assert_eq!(handle.digests(), Some(digest_reader(&gz[..]).unwrap()));
    }

    #[tokio::test]
    async fn input_errors_pass_through_decompress_unchanged() {
        let gz = gzip_bytes(&text_bytes(4 * BLOCK), opts(2)).await;
        let input = FailingAfter { data: gz[..gz.len() / 2].to_vec(), pos: 0 };
        let mut reader = decompress(Box::pin(input));
        let err = reader.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(err.to_string(), "connection reset by peer");
        assert_eq!(reader.read(&mut [0u8; 10]).await.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_decompressed_reader_stops_the_work() {
        let input = Generator::new(random_bytes(BLOCK, 2), None);
        let (taken, dropped) = (input.taken.clone(), input.dropped.clone());
        let mut reader = decompress(compress(Box::pin(input), opts(2)));
        let mut buf = vec![0u8; 3 * BLOCK];
        reader.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf[..BLOCK], random_bytes(BLOCK, 2));
        drop(reader);
        eventually("the input is dropped", || dropped.load(Ordering::SeqCst)).await;
        let after_drop = taken.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(taken.load(Ordering::SeqCst), after_drop);
    }
}
