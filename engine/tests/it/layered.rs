//! Layered pushes and partial pulls through the real engine (Docker 20.10 here): a rebuild
//! whose only change is its top layer uploads that layer and copies the rest; a host that has
//! the previous image downloads only the new layer, and `docker load` takes the partial archive.

use std::io::Read;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use s3dock_core::clock::SystemClock;
use s3dock_core::gzip::GzipOptions;
use s3dock_core::names::{EnvName, ImageRef};
use s3dock_core::registry::{EventMode, PromoteSource, Registry};
use s3dock_core::store::{LocalStore, ObjectStore};
use s3dock_core::transfer::Progress;
use s3dock_engine::DockerEngine;
use s3dock_engine::ship::{self, GitOverride, PullRequest, PullTarget, PushRequest};
use s3dock_testkit::pseudo_random as noise;
use tokio_util::sync::CancellationToken;

use crate::support::*;

fn files(repo: &str, top: &str) -> Vec<(String, Vec<u8>)> {
    let dockerfile = format!(
        "FROM scratch\n{}COPY busybox /bin/busybox\nCOPY base.bin /base.bin\nCOPY top.txt /top.txt\n",
        isolating_label(repo)
    );
    vec![
        ("Dockerfile".into(), dockerfile.into_bytes()),
        ("busybox".into(), busybox()),
        ("base.bin".into(), noise(3 << 20, 7)),
        ("top.txt".into(), top.as_bytes().to_vec()),
    ]
}

fn push_req(image: &ImageRef, commit: &str, hour: u32) -> PushRequest {
    PushRequest {
        image: image.clone(),
        git: Some(GitOverride {
            commit: format!("{commit}{}", "0".repeat(40 - commit.len())),
            committed_at: Utc.with_ymd_and_hms(2025, 7, 21, hour, 18, 0).unwrap(),
            source: None,
        }),
        gzip: GzipOptions::default(),
        force: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_ships_only_its_new_layer_and_loads_in_part() {
    let Some(engine) = engine().await else { return };
    let cleanup = Cleanup::new(&engine);
    let repo = unique_repo();
    let one = ImageRef::parse(&format!("{repo}:20250721-2118-f7a5a27")).unwrap();
    let two = ImageRef::parse(&format!("{repo}:20250721-2218-abcdef1")).unwrap();
    let id1 = build_from_files(&engine, &one.to_string(), &files(&repo, "one")).await;
    cleanup.image(one.to_string());
    let id2 = build_from_files(&engine, &two.to_string(), &files(&repo, "two")).await;
    cleanup.image(two.to_string());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path()).unwrap());
    let reg = Registry::new(store.clone() as Arc<dyn ObjectStore>, Arc::new(SystemClock), "tester", EventMode::Inline);
    let cancel = CancellationToken::new();

    let first = ship::push(&engine, &reg, &push_req(&one, "f7a5a27", 21), &Progress::default(), &cancel).await.unwrap();
    assert!(first.outcome.layers.iter().all(|l| l.reused_from.is_none()), "{:?}", first.outcome.layers);
    let second =
        ship::push(&engine, &reg, &push_req(&two, "abcdef1", 22), &Progress::default(), &cancel).await.unwrap();
    let uploaded: u64 = second.outcome.layers.iter().filter(|l| l.reused_from.is_none()).map(|l| l.bytes).sum();
    let reused: Vec<_> = second.outcome.layers.iter().filter(|l| l.reused_from.is_some()).collect();
    assert_eq!(reused.len(), 2, "busybox and the base are copied: {:?}", second.outcome.layers);
    assert!(reused.iter().all(|l| l.reused_from.as_deref() == Some(one.to_string().as_str())));
    let rec2 = reg.image(&two).await.unwrap();
    assert!(rec2.metadata.is_composed());
    assert!(uploaded * 50 < rec2.metadata.size, "uploaded {uploaded} of {}", rec2.metadata.size);

    // The composed object is a plain gzipped archive: gunzip | docker load gives the image.
    engine.remove_image(&two.to_string(), true).await.unwrap();
    let gz = std::fs::read(store.path_of(&rec2.archive_key)).unwrap();
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(gz.as_slice()).read_to_end(&mut tar).unwrap();
    engine.load_image(s3dock_core::store::reader_from_bytes(tar.clone())).await.expect("gunzip | docker load");
    assert_eq!(engine.inspect_image(&two.to_string()).await.unwrap().unwrap().id, id2);

    // A host that has the first image downloads the top layer and the tail only.
    engine.remove_image(&two.to_string(), true).await.unwrap();
    let prod = EnvName::parse("production").unwrap();
    reg.promote(&PromoteSource::Image(two.clone()), &prod).await.unwrap();
    let req = PullRequest { app: two.app.clone(), target: PullTarget::Env(prod), keep: None };
    let pulled = ship::pull(&engine, &reg, &req, &Progress::default()).await.expect("partial pull");
    let partial = pulled.partial.expect("a partial pull");
    assert_eq!((partial.layers_present, partial.layers), (2, 3));
    assert!(pulled.bytes * 20 < rec2.metadata.size, "downloaded {} of {}", pulled.bytes, rec2.metadata.size);
    assert_eq!(engine.inspect_image(&two.to_string()).await.unwrap().unwrap().id, id2);

    // Without the base chain the engine refuses a partial archive, and says so in a way the
    // pull recognises (it then downloads the whole archive).
    engine.remove_image(&two.to_string(), true).await.unwrap();
    engine.remove_image(&one.to_string(), true).await.unwrap();
    let partial_tar = {
        let mut part = Vec::new();
        let mut r = tar::Archive::new(tar.as_slice());
        let mut b = tar::Builder::new(&mut part);
        for e in r.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let layer = reused.iter().any(|l| l.path.as_deref() == Some(name.as_str()));
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if !layer {
                let mut h = e.header().clone();
                b.append_data(&mut h, &name, data.as_slice()).unwrap();
            }
        }
        b.finish().unwrap();
        drop(b);
        part
    };
    if engine.inspect_image(&id1).await.unwrap().is_none() {
        let e = engine.load_image(s3dock_core::store::reader_from_bytes(partial_tar)).await.unwrap_err();
        assert!(s3dock_engine::partial::refused(&e), "{e:?}");
    }
    let pulled = ship::pull(&engine, &reg, &req, &Progress::default()).await.expect("full pull");
    assert!(pulled.partial.is_none() || pulled.bytes < rec2.metadata.size);
    assert_eq!(engine.inspect_image(&two.to_string()).await.unwrap().unwrap().id, id2);
    let _ = id1;
}
