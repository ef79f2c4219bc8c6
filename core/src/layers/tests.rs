//! The layered layout end to end on the in-memory store: push, reuse, full and partial reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::tar::{self, Kind};
use super::*;
use crate::clock::ManualClock;
use crate::gzip::{self, GzipOptions};
use crate::names::ImageRef;
use crate::push::{PushFacts, PushPlan};
use crate::registry::{EventMode, Registry};
use crate::store::faults::{Faulty, Op};
use crate::store::{BoxReader, MemoryStore, ObjectStore, StoreError, read_to_vec, reader_from_bytes};
use crate::transfer::{self, Progress};

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A `docker save` archive of a 20.10 engine: per layer `{id}/VERSION`, `json`, `layer.tar`
/// (in id order), the config, `manifest.json`, `repositories`; headers with a save-time mtime.
struct Image {
    tar: Vec<u8>,
    id: String,
    diff_ids: Vec<String>,
}

fn layer_content(seed: u8, len: usize) -> Vec<u8> {
    // A tar of its own, like a real layer, with content that compresses a little.
    let data: Vec<u8> = (0..len).map(|i| ((i as u64 * 2654435761 + seed as u64 * 97) % 251) as u8 / 4 + seed).collect();
    let mut t = tar::entry(&format!("file-{seed}"), Kind::File, &data, "");
    t.extend(tar::end_marker());
    t
}

fn save(layers: &[(&str, Vec<u8>)], config_note: &str, mtime: u64) -> Image {
    let diff_ids: Vec<String> = layers.iter().map(|(_, l)| format!("sha256:{}", sha(l))).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Labels": {"note": config_note}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let id = sha(&config);
    let mut entries: BTreeMap<String, (Kind, Vec<u8>)> = BTreeMap::new();
    for (v1, content) in layers {
        entries.insert(format!("{v1}/"), (Kind::Dir, vec![]));
        entries.insert(format!("{v1}/VERSION"), (Kind::File, b"1.0".to_vec()));
        entries.insert(format!("{v1}/json"), (Kind::File, format!("{{\"id\":\"{v1}\"}}").into_bytes()));
        entries.insert(format!("{v1}/layer.tar"), (Kind::File, content.clone()));
    }
    entries.insert(format!("{id}.json"), (Kind::File, config));
    let layer_paths: Vec<String> = layers.iter().map(|(v1, _)| format!("{v1}/layer.tar")).collect();
    let manifest = serde_json::json!([{"Config": format!("{id}.json"), "RepoTags": ["myapp:20250721-2118-f7a5a27"], "Layers": layer_paths}]);
    entries.insert("manifest.json".into(), (Kind::File, serde_json::to_vec(&manifest).unwrap()));
    entries.insert("repositories".into(), (Kind::File, b"{}".to_vec()));
    let mut tar_bytes = Vec::new();
    for (name, (kind, data)) in entries {
        let mut e = tar::entry(&name, kind, &data, "");
        // docker save stamps the time of the save: the rewritten entries must not depend on it.
        let m = format!("{mtime:011o}\0");
        e[136..148].copy_from_slice(m.as_bytes());
        e[148..156].copy_from_slice(b"        ");
        let sum: u64 = e[..512].iter().map(|&c| c as u64).sum();
        e[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        tar_bytes.extend(e);
    }
    tar_bytes.extend(tar::end_marker());
    Image { tar: tar_bytes, id: format!("sha256:{id}"), diff_ids }
}

fn facts(img: &Image) -> PushFacts {
    PushFacts {
        image_id: img.id.clone(),
        git_hash: "f7a5a27".repeat(5) + "abcde",
        git_time: "20250721-2118".into(),
        format: Some("docker-archive".into()),
        ..Default::default()
    }
}

fn registry(store: Arc<dyn ObjectStore>) -> Registry {
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2025, 7, 22, 10, 18, 0).unwrap()));
    Registry::new(store, clock, "alice", EventMode::Inline)
}

fn opts() -> GzipOptions {
    GzipOptions { level: 3, threads: 2, block_size: 64 * 1024 }
}

async fn push(reg: &Registry, tag: &str, img: &Image) -> crate::error::Result<crate::push::PushOutcome> {
    let image = ImageRef::parse(&format!("myapp:{tag}")).unwrap();
    let PushPlan::Upload(plan) = reg.plan_push(&image, &img.id, false).await? else { panic!("skipped") };
    let tar = img.tar.clone();
    let reopen = move || -> futures::future::BoxFuture<'static, crate::error::Result<BoxReader>> {
        let tar = tar.clone();
        Box::pin(async move { Ok(reader_from_bytes(tar)) })
    };
    reg.push_layered(&image, &facts(img), reader_from_bytes(img.tar.clone()), &reopen, plan, opts(), true).await
}

/// The file names and contents of a tar.
async fn entries(tar: Vec<u8>) -> BTreeMap<String, Vec<u8>> {
    let mut r = tar::Reader::new(reader_from_bytes(tar));
    let mut out = BTreeMap::new();
    while let Some(e) = r.next().await.unwrap() {
        let data = r.read_all(e.size, 1 << 30).await.unwrap();
        out.insert(e.name, data);
    }
    out
}

async fn gunzip(body: BoxReader) -> Vec<u8> {
    let mut out = Vec::new();
    gzip::decompress(body).read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn a_rebuild_reuses_its_base_layer_and_loads_whole_or_in_part() {
    let store = Arc::new(MemoryStore::new());
    let reg = registry(store.clone());
    let base = ("a".repeat(64), layer_content(1, 600_000));
    let v1 = save(&[(&base.0, base.1.clone()), (&"c".repeat(64), layer_content(2, 40_000))], "one", 1);
    let first = push(&reg, "20250721-2118-f7a5a27", &v1).await.unwrap();
    assert!(first.layers.iter().all(|l| l.reused_from.is_none()), "{:?}", first.layers);
    let rec = reg.image(&ImageRef::parse("myapp:20250721-2118-f7a5a27").unwrap()).await.unwrap();
    let index = rec.metadata.layers.clone().expect("an index");
    assert_eq!(index.diff_ids, v1.diff_ids);
    assert!(!index.composed && rec.metadata.checksum.len() == 32 && rec.metadata.sha256.is_some());
    assert_eq!(index.ranges.len(), 3, "two layers and the tail: {index:?}");
    assert_eq!(rec.metadata.tar_size, Some(index.tar_size()));

    // The archive loads as a whole: the same files, the layers byte for byte.
    let whole = gunzip(reader_from_bytes(
        read_to_vec(store.get(&rec.archive_key, Default::default()).await.unwrap().body).await.unwrap(),
    ))
    .await;
    let (got, want) = (entries(whole).await, entries(v1.tar.clone()).await);
    assert_eq!(got, want);

    // A rebuild with another top layer, saved at another time: the base is copied, not sent.
    let v2 = save(&[(&base.0, base.1.clone()), (&"d".repeat(64), layer_content(3, 40_000))], "two", 2);
    let second = push(&reg, "20250722-0900-abcdef1", &v2).await.unwrap();
    let reused: Vec<_> = second.layers.iter().filter(|l| l.reused_from.is_some()).collect();
    assert_eq!(reused.len(), 1, "{:?}", second.layers);
    assert_eq!(reused[0].reused_from.as_deref(), Some("myapp:20250721-2118-f7a5a27"));
    assert_eq!(reused[0].diff_id.as_deref(), Some(v2.diff_ids[0].as_str()));
    let image2 = ImageRef::parse("myapp:20250722-0900-abcdef1").unwrap();
    let rec2 = reg.image(&image2).await.unwrap();
    let index2 = rec2.metadata.layers.clone().unwrap();
    assert!(index2.composed && rec2.metadata.checksum.is_empty() && rec2.metadata.sha256.is_none());

    // A full read checks every range (the whole-object digests are not known).
    let full = transfer::verified_download(
        store.clone(),
        rec2.archive_key.clone(),
        rec2.metadata.clone(),
        None,
        Progress::default(),
    );
    let got = entries(gunzip(full).await).await;
    assert_eq!(got[&format!("{}/layer.tar", base.0)], base.1);
    assert_eq!(got[&format!("{}/layer.tar", "d".repeat(64))], layer_content(3, 40_000));

    // A host that has the base fetches the top layer and the tail only.
    let need = index2.ranges_for(chain_prefix(&index2.diff_ids, std::slice::from_ref(&v1.diff_ids))).unwrap();
    assert_eq!(need.len(), 2);
    let p = Progress::default();
    let part = ranged_download(store.clone(), rec2.archive_key.clone(), None, need.clone(), p.clone());
    let got = entries(gunzip(part).await).await;
    assert!(!got.contains_key(&format!("{}/layer.tar", base.0)));
    assert!(got.contains_key("manifest.json") && got.contains_key(&format!("{}/layer.tar", "d".repeat(64))));
    assert_eq!(p.bytes(), need.iter().map(|r| r.length).sum::<u64>());
    assert!(p.bytes() * 4 < rec2.metadata.size, "{} of {}", p.bytes(), rec2.metadata.size);

    // A corrupted range is caught before its end reaches the reader cleanly.
    let mut bytes = read_to_vec(store.get(&rec2.archive_key, Default::default()).await.unwrap().body).await.unwrap();
    let last = index2.ranges.last().unwrap().offset as usize + 3;
    bytes[last] ^= 1;
    store.corrupt(&rec2.archive_key, bytes);
    let part = ranged_download(store.clone(), rec2.archive_key.clone(), None, need, Progress::default());
    let e = read_to_vec(part).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
}

#[tokio::test]
async fn a_source_replaced_while_composing_means_uploading_everything() {
    let store = Arc::new(Faulty::new(MemoryStore::new()));
    let reg = registry(store.clone());
    let base = ("a".repeat(64), layer_content(1, 300_000));
    let v1 = save(&[(&base.0, base.1.clone())], "one", 1);
    push(&reg, "20250721-2118-f7a5a27", &v1).await.unwrap();
    let v2 = save(&[(&base.0, base.1.clone()), (&"d".repeat(64), layer_content(3, 10_000))], "two", 2);
    // The source vanishes between the plan and the copy.
    store.fail(Op::Get, "f7a5a27.tar.gz", 1, |k| StoreError::PreconditionFailed { key: k.into() });
    let out = push(&reg, "20250722-0900-abcdef1", &v2).await.unwrap();
    assert!(out.layers.iter().all(|l| l.reused_from.is_none()), "{:?}", out.layers);
    let rec = reg.image(&ImageRef::parse("myapp:20250722-0900-abcdef1").unwrap()).await.unwrap();
    assert!(!rec.metadata.is_composed() && rec.metadata.checksum.len() == 32);
    let images = crate::store::list_all(&*store, "images/").await.unwrap();
    assert_eq!(images.len(), 4, "the failed composition left nothing: {images:?}");
}

#[tokio::test]
async fn an_archive_whose_config_is_not_the_image_is_refused() {
    let store = Arc::new(MemoryStore::new());
    let reg = registry(store.clone());
    let mut v1 = save(&[("a".repeat(64).as_str(), layer_content(1, 1000))], "one", 1);
    let other = save(&[("a".repeat(64).as_str(), layer_content(1, 1000))], "other", 1);
    v1.tar = other.tar;
    let e = push(&reg, "20250721-2118-f7a5a27", &v1).await.unwrap_err();
    assert!(e.to_string().contains("another image"), "{e}");
    assert!(crate::store::list_all(&*store, "images/").await.unwrap().is_empty());
}

/// The verify function reads a composed archive whole, checks every range, and records the
/// whole-object MD5 and SHA-256 it computed; a damaged range is rejected.
#[tokio::test]
async fn the_verifier_accepts_a_composed_archive_and_records_its_digests() {
    use crate::events::{Handlers, ObjectEvent, Origin, Outcome, Verification};
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2025, 7, 22, 10, 18, 0).unwrap()));
    // Lambda mode: the pushes leave verification to the function.
    let reg = Registry::new(store.clone(), clock.clone(), "alice", EventMode::Lambda);
    let base = ("a".repeat(64), layer_content(1, 200_000));
    let v1 = save(&[(&base.0, base.1.clone()), (&"c".repeat(64), layer_content(2, 1000))], "one", 1);
    push(&reg, "20250721-2118-f7a5a27", &v1).await.unwrap();
    let v2 = save(&[(&base.0, base.1.clone()), (&"d".repeat(64), layer_content(3, 1000))], "two", 2);
    push(&reg, "20250722-0900-abcdef1", &v2).await.unwrap();
    let image = ImageRef::parse("myapp:20250722-0900-abcdef1").unwrap();
    let rec = reg.image(&image).await.unwrap();
    assert!(rec.metadata.is_composed());
    let handlers = Handlers::new(store.clone(), clock.clone(), Origin::Lambda, "verifier");
    let (bytes, info) = crate::store::read_small(&*store, &rec.metadata_key, 1 << 20).await.unwrap().unwrap();
    let ev = ObjectEvent::written(rec.metadata_key.clone(), &info.etag, bytes.clone());
    let out = handlers.verify_upload(&image.app, &rec.metadata_key, &ev, Verification::Download).await.unwrap();
    let Outcome::Recorded { audit_key, .. } = out else { panic!("{out:?}") };
    let (audit, _) = crate::store::read_small(&*store, &audit_key, 1 << 20).await.unwrap().unwrap();
    let audit: serde_json::Value = serde_json::from_slice(&audit).unwrap();
    let archive = read_to_vec(store.get(&rec.archive_key, Default::default()).await.unwrap().body).await.unwrap();
    let d = crate::digest::digest_reader(&archive[..]).unwrap();
    assert_eq!(audit["details"]["checksum"], d.md5);
    assert_eq!(audit["details"]["sha256"], d.sha256);
    assert_eq!(audit["details"]["verified"], "download");

    // Another composed push, damaged in a reused range before the verifier reads it: rejected.
    let v3 = save(&[(&base.0, base.1.clone()), (&"e".repeat(64), layer_content(4, 1000))], "three", 3);
    push(&reg, "20250723-1000-1234567", &v3).await.unwrap();
    let image3 = ImageRef::parse("myapp:20250723-1000-1234567").unwrap();
    let rec3 = reg.image(&image3).await.unwrap();
    assert!(rec3.metadata.is_composed());
    let mut bad = read_to_vec(store.get(&rec3.archive_key, Default::default()).await.unwrap().body).await.unwrap();
    bad[10] ^= 1;
    store.corrupt(&rec3.archive_key, bad);
    let (bytes, info) = crate::store::read_small(&*store, &rec3.metadata_key, 1 << 20).await.unwrap().unwrap();
    let ev = ObjectEvent::written(rec3.metadata_key.clone(), &info.etag, bytes);
    let out = handlers.verify_upload(&image3.app, &rec3.metadata_key, &ev, Verification::Download).await.unwrap();
    assert!(matches!(&out, Outcome::Rejected { reason, .. } if reason.contains("layer index")), "{out:?}");
}

/// An OCI archive (Docker 25+ with the containerd image store): layers are gzip blobs under
/// `blobs/sha256/`; they are stored as they are, indexed by the diff ids of the config, and
/// reused by name like any layer.
fn oci(top_seed: u8) -> Image {
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;
    let gz = |raw: &[u8]| {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(raw).unwrap();
        e.finish().unwrap()
    };
    // A base of random bytes: its gzip blob is over 1 MiB, so it gets a range of its own.
    let noise = s3dock_testkit::pseudo_random(1_300_000, 1);
    let base_raw = {
        let mut t = tar::entry("noise", Kind::File, &noise, "");
        t.extend(tar::end_marker());
        t
    };
    let top_raw = layer_content(top_seed, 5000);
    let (base_gz, top_gz) = (gz(&base_raw), gz(&top_raw));
    let diff_ids = vec![format!("sha256:{}", sha(&base_raw)), format!("sha256:{}", sha(&top_raw))];
    let config =
        serde_json::to_vec(&serde_json::json!({"os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {"Labels": {"top": top_seed.to_string()}}}))
        .unwrap();
    let (cfg_d, base_d, top_d) = (sha(&config), sha(&base_gz), sha(&top_gz));
    let manifest =
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "config": {"digest": format!("sha256:{cfg_d}")},
        "layers": [{"digest": format!("sha256:{base_d}")}, {"digest": format!("sha256:{top_d}")}]}))
        .unwrap();
    let man_d = sha(&manifest);
    let docker_manifest = serde_json::to_vec(&serde_json::json!([{"Config": format!("blobs/sha256/{cfg_d}"),
        "RepoTags": ["myapp:x"], "Layers": [format!("blobs/sha256/{base_d}"), format!("blobs/sha256/{top_d}")]}]))
    .unwrap();
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (d, b) in [(cfg_d.clone(), config), (base_d, base_gz), (top_d, top_gz), (man_d.clone(), manifest)] {
        blobs.insert(d, b);
    }
    let mut out = tar::entry("blobs/", Kind::Dir, b"", "");
    out.extend(tar::entry("blobs/sha256/", Kind::Dir, b"", ""));
    for (d, b) in &blobs {
        out.extend(tar::entry(&format!("blobs/sha256/{d}"), Kind::File, b, ""));
    }
    let index = format!("{{\"schemaVersion\":2,\"manifests\":[{{\"digest\":\"sha256:{man_d}\"}}]}}");
    out.extend(tar::entry("index.json", Kind::File, index.as_bytes(), ""));
    out.extend(tar::entry("manifest.json", Kind::File, &docker_manifest, ""));
    out.extend(tar::entry("oci-layout", Kind::File, b"{\"imageLayoutVersion\":\"1.0.0\"}", ""));
    out.extend(tar::end_marker());
    Image { tar: out, id: format!("sha256:{cfg_d}"), diff_ids }
}

#[tokio::test]
async fn oci_archives_keep_their_gzip_layers_as_they_are_and_reuse_them() {
    let store = Arc::new(MemoryStore::new());
    let reg = registry(store.clone());
    let v1 = oci(1);
    push(&reg, "20250721-2118-f7a5a27", &v1).await.unwrap();
    let rec = reg.image(&ImageRef::parse("myapp:20250721-2118-f7a5a27").unwrap()).await.unwrap();
    let index = rec.metadata.layers.clone().unwrap();
    assert_eq!(index.diff_ids, v1.diff_ids);
    let base = index.ranges.iter().find(|r| r.diff_id.as_ref() == Some(&v1.diff_ids[0])).expect("the base has a range");
    // Stored, not deflated again: the range is the blob plus a few bytes of framing.
    let blob_len = base.tar_length - 512;
    assert!(base.length < blob_len + blob_len / 50 + 1024, "{} for a {blob_len}-byte blob", base.length);
    let got = entries(
        gunzip(transfer::verified_download(
            store.clone(),
            rec.archive_key.clone(),
            rec.metadata.clone(),
            None,
            Progress::default(),
        ))
        .await,
    )
    .await;
    assert!(got.contains_key("index.json") && got.contains_key("oci-layout") && got.contains_key("manifest.json"));

    let v2 = oci(2);
    let out = push(&reg, "20250722-0900-abcdef1", &v2).await.unwrap();
    let reused: Vec<_> = out.layers.iter().filter(|l| l.reused_from.is_some()).collect();
    assert_eq!(reused.len(), 1, "{:?}", out.layers);
    assert_eq!(reused[0].diff_id.as_ref(), Some(&v2.diff_ids[0]));
    let rec2 = reg.image(&ImageRef::parse("myapp:20250722-0900-abcdef1").unwrap()).await.unwrap();
    let got = entries(
        gunzip(transfer::verified_download(
            store.clone(),
            rec2.archive_key.clone(),
            rec2.metadata.clone(),
            None,
            Progress::default(),
        ))
        .await,
    )
    .await;
    assert_eq!(got, entries(v2.tar.clone()).await);
}

/// The bytes of an encoded archive: uploaded pieces as they are, copied ones read from `source`.
async fn collect(mut pieces: crate::store::PieceStream, source: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(p) = crate::store::compose::next_piece(&mut pieces).await {
        match p.unwrap() {
            crate::store::Piece::Data(b) => out.extend_from_slice(&b),
            crate::store::Piece::Copy(r) => {
                out.extend_from_slice(&source[r.offset as usize..(r.offset + r.length) as usize])
            }
        }
    }
    out
}

/// Large layer ranges come first in `docker save` order, the small ones (new or reused) after
/// them, the tail last: a store with a minimum part size (S3) then copies every large reused
/// range as parts of its own, with no small bytes waiting in front of it.
#[tokio::test]
async fn small_layer_ranges_are_written_after_the_large_ones() {
    let layout = encode::Layout { defer_below: 5_000, max_deferred: 32 << 20 };
    let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    let v1 = save(
        &[(&a, layer_content(1, 30_000)), (&b, layer_content(2, 900_000)), (&c, layer_content(3, 20_000))],
        "one",
        1,
    );
    let (pieces, done) = encode::encode_with(reader_from_bytes(v1.tar.clone()), opts(), Default::default(), layout);
    let first = collect(pieces, &[]).await;
    let enc = done.await.unwrap();
    let paths: Vec<Option<&str>> = enc.index.ranges.iter().map(|r| r.path.as_deref()).collect();
    let (pa, pb, pc) = (format!("{a}/layer.tar"), format!("{b}/layer.tar"), format!("{c}/layer.tar"));
    assert_eq!(paths, [Some(pb.as_str()), Some(pa.as_str()), Some(pc.as_str()), None], "{:?}", enc.index);
    assert!(enc.index.ranges[0].length >= layout.defer_below);
    assert!(enc.index.ranges[1..3].iter().all(|r| r.length < layout.defer_below));
    enc.index.validate(first.len() as u64).unwrap();
    assert_eq!(enc.size, first.len() as u64);
    // Every range is what the index says, and the whole-object digests are of these bytes.
    for r in &enc.index.ranges {
        assert_eq!(sha(&first[r.offset as usize..(r.offset + r.length) as usize]), r.sha256);
    }
    let d = enc.digests.clone().expect("nothing reused: whole digests");
    assert_eq!(d.sha256, sha(&first));
    assert_eq!(entries(gunzip(reader_from_bytes(first.clone())).await).await, entries(v1.tar.clone()).await);

    // A rebuild reusing all three: the large copy first, then the two small copies and the
    // new top layer, then the tail.
    let d_ = "d".repeat(64);
    let v2 = save(
        &[
            (&a, layer_content(1, 30_000)),
            (&b, layer_content(2, 900_000)),
            (&c, layer_content(3, 20_000)),
            (&d_, layer_content(4, 10_000)),
        ],
        "two",
        2,
    );
    let key = crate::names::ObjectKey::parse("images/myapp/one.tar.gz").unwrap();
    let reuse: std::collections::HashMap<String, ReuseSource> = enc
        .index
        .ranges
        .iter()
        .filter(|r| r.path.is_some())
        .map(|r| {
            assert!(r.diff_id.is_some(), "{r:?}");
            let r = r.clone();
            let copy = crate::store::CopyRange {
                key: key.clone(),
                etag: crate::store::ETag("e".into()),
                offset: r.offset,
                length: r.length,
            };
            (r.path.clone().unwrap(), ReuseSource { image: "myapp:one".into(), copy, range: r })
        })
        .collect();
    let (pieces, done) = encode::encode_with(reader_from_bytes(v2.tar.clone()), opts(), reuse, layout);
    let second = collect(pieces, &first).await;
    let enc2 = done.await.unwrap();
    let plan: Vec<(Option<&str>, bool)> =
        enc2.plan.iter().map(|p| (p.path.as_deref(), p.reused_from.is_some())).collect();
    let pd = format!("{d_}/layer.tar");
    assert_eq!(
        plan,
        [
            (Some(pb.as_str()), true),
            (Some(pa.as_str()), true),
            (Some(pc.as_str()), true),
            (Some(pd.as_str()), false),
            (None, false)
        ]
    );
    enc2.index.validate(second.len() as u64).unwrap();
    for r in &enc2.index.ranges {
        assert_eq!(sha(&second[r.offset as usize..(r.offset + r.length) as usize]), r.sha256);
    }
    assert!(enc2.digests.is_none() && enc2.index.composed);
    assert_eq!(entries(gunzip(reader_from_bytes(second)).await).await, entries(v2.tar.clone()).await);

    // Past the memory limit for held-back bytes, small ranges stay where they are.
    let tight = encode::Layout { defer_below: 5_000, max_deferred: 1 };
    let (pieces, done) = encode::encode_with(reader_from_bytes(v1.tar.clone()), opts(), Default::default(), tight);
    let third = collect(pieces, &[]).await;
    let enc3 = done.await.unwrap();
    let paths: Vec<Option<&str>> = enc3.index.ranges.iter().map(|r| r.path.as_deref()).collect();
    // `a` was held back before the limit was reached; `c`, after it, stays in place.
    assert_eq!(paths, [Some(pb.as_str()), Some(pc.as_str()), Some(pa.as_str()), None]);
    enc3.index.validate(third.len() as u64).unwrap();
    assert_eq!(enc3.digests.unwrap().sha256, sha(&third));
}
