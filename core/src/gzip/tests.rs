//! Unit tests of `gzip`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

// Incompressible bytes (xorshift), the same for the same seed.
use s3dock_testkit::pseudo_random as random_bytes;
use tokio::io::{AsyncRead, ReadBuf};

use super::*;
use crate::digest::{HashingReader, digest_reader};
use crate::store::{read_to_vec, reader_from_bytes};

const BLOCK: usize = 16 * 1024;

fn opts(threads: usize) -> GzipOptions {
    GzipOptions { level: 1, threads, block_size: BLOCK }
}

/// Text-like bytes that compress well but not trivially.
fn text_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("{i:08} usr/lib/x86_64-linux-gnu/libfoo.so.{} rwxr-xr-x\n", i % 97).as_bytes());
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
        assert!(matches!(err.kind(), io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof), "byte {pos}: {err}");
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
