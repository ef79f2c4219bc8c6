//! The layered layout, written as `docker save` streams: each layer entry becomes its own run
//! of gzip members under a content-addressed name with fixed header fields, and the small
//! files (config, manifest, legacy per-layer files) follow at the end, in one last run.
//!
//! Layer ranges of at least [`Layout::defer_below`] compressed bytes come in the order
//! `docker save` streams them; smaller ones are held back and written after them, just before
//! the tail. `docker load` reads the manifest, not the tar order, so the order is free; this
//! one lets a store that composes from parts with a minimum size (S3: 5 MiB, every part but the
//! last) copy every large reused range as parts of its own and send the small ranges, new or
//! reused, together in the last part, instead of downloading the head of a large range to
//! make up a part in front of it.
//!
//! Layer entries keep the names `docker save` gives them: `{id}/layer.tar`, where the id is
//! derived from the layer's whole chain (every non-top layer's id is the same in every image
//! built on that chain), or `blobs/sha256/{digest}` in OCI archives. With fixed header fields the
//! bytes of such an entry, and so its compressed range, are the same in every archive that holds
//! it: a push finds a range an earlier archive already has under the same name and, instead of
//! compressing and uploading it again, composes the new object with a copy of it. The reused
//! entry's bytes are skipped as `docker save` streams them: neither compressed nor hashed.
//! Whether the reuse was right is checked before anything is committed: the archive's own
//! manifest and config (whose digest is the image id) must name, at that path, the layer the
//! source's index says the range holds.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use md5::Md5;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::io::StreamReader;

use super::index::{IndexRange, LayerIndex};
use super::tar::{self, Kind};
use crate::digest::Digests;
use crate::gzip::{self, GzipOptions};
use crate::store::{BoxReader, CopyRange, Piece, PieceStream};

/// Entries smaller than this (other than `*/layer.tar`) are kept for the tail; larger ones
/// (OCI layer blobs) get a range of their own.
pub const SMALL_ENTRY: u64 = 1 << 20;
/// The most the small files of one archive may hold together.
pub const MAX_HELD: u64 = 32 << 20;

/// Where ranges go in the object (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Layer ranges with fewer compressed bytes than this are written after the larger ones.
    pub defer_below: u64,
    /// The most compressed bytes of new small ranges held in memory for that; past it, small
    /// ranges stay where they are.
    pub max_deferred: u64,
}

impl Default for Layout {
    fn default() -> Self {
        // S3's smallest part (but the last) of a multipart upload.
        Layout { defer_below: 5 << 20, max_deferred: 32 << 20 }
    }
}

/// A range an earlier archive holds, ready to be copied.
#[derive(Debug, Clone)]
pub struct ReuseSource {
    /// The image whose archive holds it (`app:tag`), for the push report.
    pub image: String,
    pub copy: CopyRange,
    pub range: IndexRange,
}

/// What a push did with one range of the new archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RangePlan {
    /// The tar entry (`None` for the tail: config, manifest and the other small files).
    pub path: Option<String>,
    pub diff_id: Option<String>,
    /// Compressed bytes of the range.
    pub bytes: u64,
    /// The image whose archive it was copied from; `None` if it was uploaded.
    pub reused_from: Option<String>,
}

/// The new archive, once written.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub index: LayerIndex,
    /// Whole-object digests, when every byte went through this process (nothing reused).
    pub digests: Option<Digests>,
    pub size: u64,
    /// `sha256:` of the config the manifest names: the image id, if the archive is sound.
    pub config_digest: Option<String>,
    pub plan: Vec<RangePlan>,
}

/// Rewrites the `docker save` stream `input` into the layered layout as a stream of pieces
/// (see the module doc); the handle yields the index once the stream ended without error.
pub fn encode(
    input: BoxReader,
    opts: GzipOptions,
    reuse: HashMap<String, ReuseSource>,
) -> (PieceStream, oneshot::Receiver<Encoded>) {
    encode_with(input, opts, reuse, Layout::default())
}

/// [`encode`] with another [`Layout`].
pub fn encode_with(
    input: BoxReader,
    opts: GzipOptions,
    reuse: HashMap<String, ReuseSource>,
    layout: Layout,
) -> (PieceStream, oneshot::Receiver<Encoded>) {
    let (tx, rx) = mpsc::channel::<std::io::Result<Piece>>(8);
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(async move {
        match run(input, opts, reuse, layout, tx.clone()).await {
            Ok(encoded) => {
                let _ = done_tx.send(encoded);
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
    (Box::pin(stream), done_rx)
}

fn gone() -> std::io::Error {
    std::io::Error::other("the upload stopped reading the archive")
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// The whole-object hashes, while every byte passes through here.
#[derive(Default)]
struct Whole {
    md5: Md5,
    sha256: Sha256,
}

struct Held {
    name: String,
    kind: Kind,
    data: Vec<u8>,
    link: String,
}

/// A small layer range held back to be written after the large ones.
enum Deferred {
    /// Reused: the copy, written as it is.
    Copy { name: String, tar_length: u64, src: ReuseSource },
    /// New: its compressed bytes, whole.
    Data { name: String, tar_length: u64, bytes: Bytes, length: u64, sha256: String },
}

/// The index and the report, built range by range in object order.
#[derive(Default)]
struct Written {
    ranges: Vec<IndexRange>,
    plan: Vec<RangePlan>,
    offset: u64,
}

impl Written {
    fn reused(&mut self, name: String, tar_length: u64, src: &ReuseSource) {
        self.ranges.push(IndexRange {
            offset: self.offset,
            length: src.copy.length,
            sha256: src.range.sha256.clone(),
            tar_length,
            diff_id: src.range.diff_id.clone(),
            path: Some(name.clone()),
        });
        self.plan.push(RangePlan {
            path: Some(name),
            diff_id: src.range.diff_id.clone(),
            bytes: src.copy.length,
            reused_from: Some(src.image.clone()),
        });
        self.offset += src.copy.length;
    }

    fn new_range(&mut self, path: Option<String>, tar_length: u64, length: u64, sha256: String) {
        self.ranges.push(IndexRange {
            offset: self.offset,
            length,
            sha256,
            tar_length,
            diff_id: None,
            path: path.clone(),
        });
        self.plan.push(RangePlan { path, diff_id: None, bytes: length, reused_from: None });
        self.offset += length;
    }
}

fn is_layer(e: &tar::Entry) -> bool {
    e.kind == Kind::File && (e.name.ends_with("/layer.tar") || e.size >= SMALL_ENTRY)
}

async fn run(
    input: BoxReader,
    opts: GzipOptions,
    reuse: HashMap<String, ReuseSource>,
    layout: Layout,
    tx: mpsc::Sender<std::io::Result<Piece>>,
) -> std::io::Result<Encoded> {
    let mut reader = tar::Reader::new(input);
    let mut whole = Some(Whole::default());
    let mut out = Written::default();
    let mut held: Vec<Held> = Vec::new();
    let mut held_bytes = 0u64;
    let mut deferred: Vec<Deferred> = Vec::new();
    let mut deferred_bytes = 0u64;
    while let Some(e) = reader.next().await? {
        if is_layer(&e) {
            let tar_length = tar::BLOCK as u64 + tar::padded(e.size);
            if let Some(src) = reuse.get(&e.name).filter(|s| s.range.tar_length == tar_length) {
                // The same entry, already compressed in the bucket: skip its bytes unread.
                reader.skip_rest().await?;
                whole = None;
                if src.copy.length < layout.defer_below {
                    deferred.push(Deferred::Copy { name: e.name, tar_length, src: src.clone() });
                } else {
                    tx.send(Ok(Piece::Copy(src.copy.clone()))).await.map_err(|_| gone())?;
                    out.reused(e.name, tar_length, src);
                }
                continue;
            }
            let first = reader.data(e.size, 64 * 1024).await?;
            // An OCI layer blob is gzip already: store it as it is rather than deflate it again.
            let level = if first.starts_with(&[0x1f, 0x8b]) { 0 } else { opts.level };
            let (seg_tx, seg_rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
            let compressed = gzip::compress(
                Box::pin(StreamReader::new(futures::stream::unfold(seg_rx, |mut rx| async move {
                    rx.recv().await.map(|i| (i, rx))
                }))),
                GzipOptions { level, ..opts },
            );
            // Held until it is known to be large, unless the held-back bytes are at their limit.
            let hold = if deferred_bytes < layout.max_deferred { layout.defer_below } else { 0 };
            let fwd = tokio::spawn(forward(compressed, tx.clone(), whole.take(), hold));
            let feed = async {
                seg_tx.send(Ok(Bytes::from(tar::header(&e.name, Kind::File, e.size, "")))).await.map_err(|_| gone())?;
                let mut left = e.size - first.len() as u64;
                seg_tx.send(Ok(first)).await.map_err(|_| gone())?;
                while left > 0 {
                    let chunk = reader.data(left, 256 * 1024).await?;
                    left -= chunk.len() as u64;
                    seg_tx.send(Ok(chunk)).await.map_err(|_| gone())?;
                }
                seg_tx.send(Ok(tar::padding(e.size))).await.map_err(|_| gone())?;
                Ok::<_, std::io::Error>(())
            };
            let fed = feed.await;
            if let Err(err) = fed {
                fwd.abort();
                return Err(err);
            }
            drop(seg_tx);
            let sent = fwd.await.map_err(|e| std::io::Error::other(format!("a compression task failed: {e}")))??;
            whole = sent.whole;
            match sent.held {
                Some(bytes) => {
                    deferred_bytes += sent.length;
                    deferred.push(Deferred::Data {
                        name: e.name,
                        tar_length,
                        bytes,
                        length: sent.length,
                        sha256: sent.sha256,
                    });
                }
                None => out.new_range(Some(e.name), tar_length, sent.length, sent.sha256),
            }
        } else {
            held_bytes += e.size + tar::BLOCK as u64;
            if held_bytes > MAX_HELD {
                return Err(invalid(format!(
                    "the image archive holds more than {} MiB of small files besides its layers; s3dock cannot lay it out by layer",
                    MAX_HELD >> 20
                )));
            }
            let data = reader.read_all(e.size, SMALL_ENTRY).await?;
            held.push(Held { name: e.name, kind: e.kind, data, link: e.link });
        }
    }
    // The small layer ranges, after the large ones.
    for d in deferred {
        match d {
            Deferred::Copy { name, tar_length, src } => {
                tx.send(Ok(Piece::Copy(src.copy.clone()))).await.map_err(|_| gone())?;
                out.reused(name, tar_length, &src);
            }
            Deferred::Data { name, tar_length, bytes, length, sha256 } => {
                if let Some(w) = &mut whole {
                    w.md5.update(&bytes);
                    w.sha256.update(&bytes);
                }
                tx.send(Ok(Piece::Data(bytes))).await.map_err(|_| gone())?;
                out.new_range(Some(name), tar_length, length, sha256);
            }
        }
    }
    // The tail: every small file, then the end-of-archive marker, in one last run of members.
    let mut tail = Vec::new();
    for h in &held {
        tail.extend(tar::entry(&h.name, h.kind, &h.data, &h.link));
    }
    tail.extend(tar::end_marker());
    let tail_tar = tail.len() as u64;
    let compressed = gzip::compress(crate::store::reader_from_bytes(tail), opts);
    let sent = forward(compressed, tx.clone(), whole, 0).await?;
    let whole = sent.whole;
    out.new_range(None, tail_tar, sent.length, sent.sha256);
    let Written { mut ranges, mut plan, offset } = out;

    let (diff_ids, config_digest) = match resolve(&held) {
        Some((layers, config_digest)) => {
            for r in ranges.iter_mut() {
                let Some(path) = &r.path else { continue };
                let named = layers.iter().find(|(p, _)| p == path).map(|(_, d)| d.clone());
                match (r.diff_id.clone(), named) {
                    // A reused range must hold the layer this archive's own manifest puts there.
                    (Some(had), Some(named)) if had != named => {
                        return Err(invalid(format!(
                            "the reused range for {path} holds layer {had}, but this image has {named} there"
                        )));
                    }
                    (Some(had), None) => {
                        return Err(invalid(format!(
                            "the reused range for {path} ({had}) is not a layer of this image"
                        )));
                    }
                    (_, named) => r.diff_id = named,
                }
            }
            for (r, p) in ranges.iter().zip(plan.iter_mut()) {
                p.diff_id = r.diff_id.clone();
            }
            (layers.into_iter().map(|(_, d)| d).collect(), Some(config_digest))
        }
        None if ranges.iter().any(|r| r.diff_id.is_some()) => {
            return Err(invalid(
                "layers were reused, but the archive's manifest does not say which layers it holds".into(),
            ));
        }
        None => (Vec::new(), None),
    };
    let composed = whole.is_none();
    let digests = whole.map(|w| Digests {
        md5: hex::encode(w.md5.finalize()),
        sha256: hex::encode(w.sha256.finalize()),
        size: offset,
    });
    Ok(Encoded { index: LayerIndex { diff_ids, ranges, composed }, digests, size: offset, config_digest, plan })
}

/// A compressed segment, once sent on (or held back).
struct Sent {
    length: u64,
    sha256: String,
    whole: Option<Whole>,
    /// The whole segment, when it stayed under the `hold` threshold: not sent, not yet part of
    /// the whole-object hashes.
    held: Option<Bytes>,
}

/// Sends a compressed segment on as pieces, hashing it: its length and SHA-256. The first
/// `hold` bytes are kept back until the segment proves larger; a segment that never does is
/// returned whole instead of sent.
async fn forward(
    mut compressed: BoxReader,
    tx: mpsc::Sender<std::io::Result<Piece>>,
    mut whole: Option<Whole>,
    hold: u64,
) -> std::io::Result<Sent> {
    let mut sha = Sha256::new();
    let mut length = 0u64;
    // Kept in one buffer (not as read chunks, each of which would pin a whole read buffer).
    let mut kept: Option<BytesMut> = (hold > 0).then(BytesMut::new);
    loop {
        let mut buf = BytesMut::with_capacity(256 * 1024);
        if compressed.read_buf(&mut buf).await? == 0 {
            break;
        }
        sha.update(&buf);
        length += buf.len() as u64;
        let chunk = match kept.as_mut() {
            Some(k) => {
                k.extend_from_slice(&buf);
                if length < hold {
                    continue;
                }
                // Large after all: send what was kept.
                kept.take().unwrap_or_default().freeze()
            }
            None => buf.freeze(),
        };
        if let Some(w) = &mut whole {
            w.md5.update(&chunk);
            w.sha256.update(&chunk);
        }
        tx.send(Ok(Piece::Data(chunk))).await.map_err(|_| gone())?;
    }
    Ok(Sent { length, sha256: hex::encode(sha.finalize()), whole, held: kept.map(BytesMut::freeze) })
}

/// The layers in manifest order (the path holding each, its diff id) and the config's digest,
/// from the archive's `manifest.json` and config. `None` if they are missing or unreadable.
fn resolve(held: &[Held]) -> Option<(Vec<(String, String)>, String)> {
    let find = |name: &str| held.iter().find(|h| h.name == name && h.kind == Kind::File);
    let manifest: serde_json::Value = serde_json::from_slice(&find("manifest.json")?.data).ok()?;
    let first = manifest.as_array()?.first()?;
    let config_path = first.get("Config")?.as_str()?;
    let config = find(config_path)?;
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config.data)));
    let config: serde_json::Value = serde_json::from_slice(&config.data).ok()?;
    let diff_ids: Vec<String> = config
        .get("rootfs")?
        .get("diff_ids")?
        .as_array()?
        .iter()
        .map(|d| d.as_str().map(str::to_owned))
        .collect::<Option<_>>()?;
    let paths: Vec<String> =
        first.get("Layers")?.as_array()?.iter().map(|p| p.as_str().map(|p| follow(held, p))).collect::<Option<_>>()?;
    if paths.len() != diff_ids.len() {
        return None;
    }
    Some((paths.into_iter().zip(diff_ids).collect(), config_digest))
}

/// The file a manifest path names, through a symlink `docker save` wrote for a layer that
/// appears twice in the image.
fn follow(held: &[Held], path: &str) -> String {
    match held.iter().find(|h| h.name == path && h.kind == Kind::Symlink) {
        Some(link) => {
            let mut parts: Vec<&str> = path.split('/').collect();
            parts.pop();
            for seg in link.link.split('/') {
                match seg {
                    ".." => {
                        parts.pop();
                    }
                    "." | "" => {}
                    s => parts.push(s),
                }
            }
            parts.join("/")
        }
        None => path.to_owned(),
    }
}
