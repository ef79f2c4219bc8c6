//! The layered layout, written as `docker save` streams: each layer entry becomes its own run
//! of gzip members under a content-addressed name with fixed header fields, and the small
//! files (config, manifest, legacy per-layer files) follow at the end, in one last run.
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
    let (tx, rx) = mpsc::channel::<std::io::Result<Piece>>(8);
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(async move {
        match run(input, opts, reuse, tx.clone()).await {
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

fn is_layer(e: &tar::Entry) -> bool {
    e.kind == Kind::File && (e.name.ends_with("/layer.tar") || e.size >= SMALL_ENTRY)
}

async fn run(
    input: BoxReader,
    opts: GzipOptions,
    reuse: HashMap<String, ReuseSource>,
    tx: mpsc::Sender<std::io::Result<Piece>>,
) -> std::io::Result<Encoded> {
    let mut reader = tar::Reader::new(input);
    let mut whole = Some(Whole::default());
    let mut ranges: Vec<IndexRange> = Vec::new();
    let mut plan: Vec<RangePlan> = Vec::new();
    let mut offset = 0u64;
    let mut held: Vec<Held> = Vec::new();
    let mut held_bytes = 0u64;
    while let Some(e) = reader.next().await? {
        if is_layer(&e) {
            let tar_length = tar::BLOCK as u64 + tar::padded(e.size);
            if let Some(src) = reuse.get(&e.name).filter(|s| s.range.tar_length == tar_length) {
                // The same entry, already compressed in the bucket: skip its bytes unread.
                reader.skip_rest().await?;
                tx.send(Ok(Piece::Copy(src.copy.clone()))).await.map_err(|_| gone())?;
                whole = None;
                ranges.push(IndexRange {
                    offset,
                    length: src.copy.length,
                    sha256: src.range.sha256.clone(),
                    tar_length,
                    diff_id: src.range.diff_id.clone(),
                    path: Some(e.name.clone()),
                });
                plan.push(RangePlan {
                    path: Some(e.name),
                    diff_id: src.range.diff_id.clone(),
                    bytes: src.copy.length,
                    reused_from: Some(src.image.clone()),
                });
                offset += src.copy.length;
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
            let fwd = tokio::spawn(forward(compressed, tx.clone(), whole.take()));
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
            let (length, sha256, w) =
                fwd.await.map_err(|e| std::io::Error::other(format!("a compression task failed: {e}")))??;
            whole = w;
            ranges.push(IndexRange { offset, length, sha256, tar_length, diff_id: None, path: Some(e.name.clone()) });
            plan.push(RangePlan { path: Some(e.name), diff_id: None, bytes: length, reused_from: None });
            offset += length;
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
    // The tail: every small file, then the end-of-archive marker, in one last run of members.
    let mut tail = Vec::new();
    for h in &held {
        tail.extend(tar::entry(&h.name, h.kind, &h.data, &h.link));
    }
    tail.extend(tar::end_marker());
    let tail_tar = tail.len() as u64;
    let compressed = gzip::compress(crate::store::reader_from_bytes(tail), opts);
    let (length, sha256, whole) = forward(compressed, tx.clone(), whole).await?;
    ranges.push(IndexRange { offset, length, sha256, tar_length: tail_tar, diff_id: None, path: None });
    plan.push(RangePlan { path: None, diff_id: None, bytes: length, reused_from: None });
    offset += length;

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

/// Sends a compressed segment on as pieces, hashing it: its length and SHA-256.
async fn forward(
    mut compressed: BoxReader,
    tx: mpsc::Sender<std::io::Result<Piece>>,
    mut whole: Option<Whole>,
) -> std::io::Result<(u64, String, Option<Whole>)> {
    let mut sha = Sha256::new();
    let mut length = 0u64;
    loop {
        let mut buf = BytesMut::with_capacity(256 * 1024);
        if compressed.read_buf(&mut buf).await? == 0 {
            break;
        }
        sha.update(&buf);
        if let Some(w) = &mut whole {
            w.md5.update(&buf);
            w.sha256.update(&buf);
        }
        length += buf.len() as u64;
        tx.send(Ok(Piece::Data(buf.freeze()))).await.map_err(|_| gone())?;
    }
    Ok((length, hex::encode(sha.finalize()), whole))
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
