//! Digests of image archives: MD5 (what the original tool's metadata and S3's ETags use),
//! SHA-256 (what new metadata adds) and the size, computed while the bytes stream past.
//!
//! - [`HashingReader`] hashes a stream in place, with no copy and no buffer of its own: each
//!   read's bytes are hashed straight from the caller's buffer.
//! - Its [`DigestHandle`] outlives the reader (which is usually moved into an upload or a
//!   decompressor) and yields [`Digests`] only once the stream reached EOF: digests of a
//!   stream cut short by an error or a drop are never handed out, so a truncated read cannot
//!   look verified.
//! - [`verify`] compares what was read with what the metadata promises, as an
//!   [`IntegrityError`] that names the field and says what to do.

use std::io::{self, Read};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use strum::{Display, EnumIter, EnumString, IntoStaticStr};

use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use crate::docs::ImageMetadata;

/// The digests of a whole stream: lowercase hex MD5 and SHA-256, and its length in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    pub md5: String,
    pub sha256: String,
    pub size: u64,
}

/// Both hashes and the byte count, fed together so every byte is hashed by both or neither.
#[derive(Default)]
struct Hashers {
    md5: Md5,
    sha256: Sha256,
    size: u64,
}

impl Hashers {
    fn update(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        self.sha256.update(bytes);
        self.size += bytes.len() as u64;
    }

    fn finish(self) -> Digests {
        Digests { md5: hex::encode(self.md5.finalize()), sha256: hex::encode(self.sha256.finalize()), size: self.size }
    }
}

/// What the reader shares with its handles. The byte count is an atomic so a progress bar
/// can poll it from another task without ever contending with the hot path.
#[derive(Debug, Default)]
struct Shared {
    bytes: AtomicU64,
    done: OnceLock<Digests>,
}

/// An [`AsyncRead`] pass-through that hashes every byte it returns with MD5 and SHA-256.
///
/// Take a [`DigestHandle`] with [`handle`](Self::handle) before moving the reader into its
/// consumer; the handle reports the digests once the consumer read the stream to EOF.
pub struct HashingReader<R> {
    inner: R,
    /// `None` once EOF was seen and the digests were published.
    hashers: Option<Hashers>,
    shared: Arc<Shared>,
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hashers: Some(Hashers::default()), shared: Arc::default() }
    }

    /// A handle on this reader's progress and, after EOF, its digests.
    pub fn handle(&self) -> DigestHandle {
        DigestHandle { shared: self.shared.clone() }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R> std::fmt::Debug for HashingReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashingReader").field("shared", &self.shared).finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        // An error leaves the hashers unfinished: the handle then never reports digests.
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        match &mut this.hashers {
            Some(hashers) if !new.is_empty() => {
                hashers.update(new);
                this.shared.bytes.fetch_add(new.len() as u64, Ordering::Relaxed);
            }
            // Zero bytes into a non-empty buffer is EOF: publish. (Zero bytes into a full
            // buffer is only the caller asking for nothing.)
            Some(_) if asked => {
                let digests = this.hashers.take().map(Hashers::finish);
                if let Some(digests) = digests {
                    // The reader publishes once: `hashers` is `None` afterwards.
                    let _ = this.shared.done.set(digests);
                }
            }
            Some(_) => {}
            // Some readers (a growing file) return data after EOF. The digests already
            // published would not cover it, so refuse it rather than pass it unhashed.
            None if !new.is_empty() => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the stream returned data after its end; its digests were already computed",
                )));
            }
            None => {}
        }
        Poll::Ready(Ok(()))
    }
}

/// A cloneable view of a [`HashingReader`]'s progress and result.
#[derive(Debug, Clone)]
pub struct DigestHandle {
    shared: Arc<Shared>,
}

impl DigestHandle {
    /// The digests of the whole stream, or `None` if the reader has not reached EOF (it
    /// failed, was dropped early, or is still being read).
    pub fn digests(&self) -> Option<Digests> {
        self.shared.done.get().cloned()
    }

    /// Bytes read so far, for progress reporting.
    pub fn bytes_read(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }
}

/// Digests of a blocking reader, read to its end.
pub fn digest_reader(mut reader: impl Read) -> io::Result<Digests> {
    let mut hashers = Hashers::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(hashers.finish()),
            Ok(n) => hashers.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What an archive is supposed to be, as its metadata says. SHA-256 is optional: metadata
/// written by the original tool has only the MD5 and the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected<'a> {
    pub md5: &'a str,
    pub sha256: Option<&'a str>,
    pub size: u64,
}

impl<'a> From<&'a Digests> for Expected<'a> {
    fn from(d: &'a Digests) -> Self {
        Expected { md5: &d.md5, sha256: Some(&d.sha256), size: d.size }
    }
}

impl<'a> From<&'a ImageMetadata> for Expected<'a> {
    fn from(m: &'a ImageMetadata) -> Self {
        Expected { md5: &m.checksum, sha256: m.sha256.as_deref(), size: m.size }
    }
}

/// Which part of the digests disagreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoStaticStr, Display, EnumString, EnumIter)]
#[strum(serialize_all = "lowercase")]
pub enum DigestField {
    Size,
    Md5,
    Sha256,
}

impl DigestField {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The bytes read are not the bytes the metadata describes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the archive's {what} is {actual} but its metadata says {expected}: the object in the bucket does not match its metadata, or it was damaged in transit; try again, and if it still fails re-push the image"
)]
pub struct IntegrityError {
    pub what: DigestField,
    pub expected: String,
    pub actual: String,
}

/// Checks `actual` against `expected`: size first (a truncated transfer shows there most
/// plainly), then MD5, then SHA-256 when the metadata has one.
pub fn verify(expected: Expected<'_>, actual: &Digests) -> Result<(), IntegrityError> {
    let mismatch = |what, expected: &dyn ToString, actual: &dyn ToString| {
        Err(IntegrityError { what, expected: expected.to_string(), actual: actual.to_string() })
    };
    if expected.size != actual.size {
        return mismatch(DigestField::Size, &expected.size, &actual.size);
    }
    if expected.md5 != actual.md5 {
        return mismatch(DigestField::Md5, &expected.md5, &actual.md5);
    }
    match expected.sha256 {
        Some(sha) if sha != actual.sha256 => mismatch(DigestField::Sha256, &sha, &actual.sha256),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::store::{BoxReader, reader_from_bytes};

    /// `as_str`, `Display` and `FromStr` (strum) name every field by the same word.
    #[test]
    fn digest_field_words() {
        use strum::IntoEnumIterator;
        let words: Vec<&str> = DigestField::iter().map(DigestField::as_str).collect();
        assert_eq!(words, ["size", "md5", "sha256"]);
        for f in DigestField::iter() {
            assert_eq!(f.to_string(), f.as_str());
            assert_eq!(f.as_str().parse::<DigestField>(), Ok(f));
        }
    }

    // Published test vectors (RFC 1321 for MD5, FIPS 180-2 for SHA-256).
    const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC_MD5: &str = "900150983cd24fb0d6963f7d28e17f72";
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn abc() -> Digests {
        Digests { md5: ABC_MD5.into(), sha256: ABC_SHA256.into(), size: 3 }
    }

    /// A reader that yields `data` in chunks of `chunk` bytes, then fails instead of EOF.
    struct FailingAfter {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl AsyncRead for FailingAfter {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            if self.pos == self.data.len() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "connection reset")));
            }
            let n = self.chunk.min(self.data.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.data[start..start + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn digest_reader_matches_known_vectors() {
        assert_eq!(
            digest_reader(&b""[..]).unwrap(),
            Digests { md5: EMPTY_MD5.into(), sha256: EMPTY_SHA256.into(), size: 0 }
        );
        assert_eq!(digest_reader(&b"abc"[..]).unwrap(), abc());
    }

    #[tokio::test]
    async fn hashing_reader_passes_bytes_through_and_reports_after_eof() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let expected = digest_reader(&data[..]).unwrap();
        let mut reader = HashingReader::new(reader_from_bytes(data.clone()));
        let handle = reader.handle();
        let copy = handle.clone();

        // Small reads, so the stream is hashed across many calls.
        let mut out = Vec::new();
        let mut buf = [0u8; 1000];
        let n = reader.read(&mut buf).await.unwrap();
        out.extend_from_slice(&buf[..n]);
        assert_eq!(handle.bytes_read(), n as u64);
        assert_eq!(handle.digests(), None, "no digests before EOF");
        reader.read_to_end(&mut out).await.unwrap();

        assert_eq!(out, data);
        assert_eq!(handle.digests(), Some(expected.clone()));
        assert_eq!(copy.digests(), Some(expected));
        assert_eq!(copy.bytes_read(), data.len() as u64);
    }

    #[tokio::test]
    async fn hashing_reader_of_an_empty_stream() {
        let mut reader = HashingReader::new(reader_from_bytes(Vec::new()));
        let handle = reader.handle();
        reader.read_to_end(&mut Vec::new()).await.unwrap();
        assert_eq!(handle.digests(), Some(Digests { md5: EMPTY_MD5.into(), sha256: EMPTY_SHA256.into(), size: 0 }));
    }

    #[tokio::test]
    async fn a_zero_length_read_is_not_eof() {
        let mut reader = HashingReader::new(reader_from_bytes(&b"abc"[..]));
        let handle = reader.handle();
        assert_eq!(reader.read(&mut []).await.unwrap(), 0);
        assert_eq!(handle.digests(), None);
        reader.read_to_end(&mut Vec::new()).await.unwrap();
        assert_eq!(handle.digests(), Some(abc()));
    }

    #[tokio::test]
    async fn a_failed_stream_never_reports_digests() {
        let inner = FailingAfter { data: b"abc".to_vec(), pos: 0, chunk: 1 };
        let mut reader = HashingReader::new(Box::pin(inner) as BoxReader);
        let handle = reader.handle();
        let err = reader.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(handle.bytes_read(), 3);
        assert_eq!(handle.digests(), None, "an interrupted stream must not look complete");
    }

    #[tokio::test]
    async fn a_stream_dropped_before_eof_never_reports_digests() {
        let mut reader = HashingReader::new(reader_from_bytes(&b"abcdef"[..]));
        let handle = reader.handle();
        let mut buf = [0u8; 3];
        reader.read_exact(&mut buf).await.unwrap();
        drop(reader);
        assert_eq!(handle.bytes_read(), 3);
        assert_eq!(handle.digests(), None);
    }

    #[test]
    fn verify_accepts_a_match_and_old_metadata_without_sha256() {
        let actual = abc();
        assert_eq!(verify(Expected::from(&actual), &actual), Ok(()));
        assert_eq!(verify(Expected { md5: ABC_MD5, sha256: None, size: 3 }, &actual), Ok(()));
    }

    #[test]
    fn verify_names_the_first_field_that_differs() {
        let actual = abc();
        let err = verify(Expected { md5: EMPTY_MD5, sha256: Some(EMPTY_SHA256), size: 4 }, &actual).unwrap_err();
        assert_eq!(err, IntegrityError { what: DigestField::Size, expected: "4".into(), actual: "3".into() });

        let err = verify(Expected { md5: EMPTY_MD5, sha256: Some(ABC_SHA256), size: 3 }, &actual).unwrap_err();
        assert_eq!(err.what, DigestField::Md5);
        assert_eq!(err.expected, EMPTY_MD5);
        assert_eq!(err.actual, ABC_MD5);

        let err = verify(Expected { md5: ABC_MD5, sha256: Some(EMPTY_SHA256), size: 3 }, &actual).unwrap_err();
        assert_eq!(err.what, DigestField::Sha256);
        let msg = err.to_string();
        assert!(msg.contains("sha256") && msg.contains(EMPTY_SHA256) && msg.contains("re-push"), "{msg}");
    }

    #[test]
    fn expected_from_metadata_uses_checksum_as_md5() {
        let meta: ImageMetadata = serde_json::from_value(serde_json::json!({
            "checksum": ABC_MD5,
            "size": 3,
            "created_at": "2024-01-02T03:04:05Z",
            "git_hash": "abcdef1",
            "git_time": "20240102-0304",
            "image_tag": "app:20240102-0304-abcdef1",
            "app_name": "app",
        }))
        .unwrap();
        assert_eq!(Expected::from(&meta), Expected { md5: ABC_MD5, sha256: None, size: 3 });
        assert_eq!(verify(Expected::from(&meta), &abc()), Ok(()));
    }

    #[test]
    fn digests_round_trip_through_json() {
        let d = abc();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digests>(&json).unwrap(), d);
    }
}
