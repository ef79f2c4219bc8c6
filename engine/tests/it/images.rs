//! Images: save/load round trips, aborted loads, inspect, list, tag and remove.

use bytes::Bytes;
use s3dock_core::store::{read_to_vec, reader_from_bytes};
use s3dock_engine::{ArchiveFormat, DockerEngine, EngineError, sniff_archive_format};

use crate::support::{Cleanup, FailingReader, build_small, engine_or_skip, unique_repo};

/// `docker save` bytes of `reference`.
async fn saved(engine: &impl DockerEngine, reference: &str) -> Bytes {
    Bytes::from(read_to_vec(engine.save_image(reference).await.unwrap()).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_then_load_keeps_the_image_id() {
    let engine = engine_or_skip!();
    let repo = unique_repo();
    let reference = format!("{repo}:20250721-2118-f7a5a27");
    let cleanup = Cleanup::new(&engine);
    cleanup.image(reference.clone());
    let id = build_small(&engine, &reference, "round trip").await;

    let archive = saved(&engine, &reference).await;
    let server = engine.version().await.unwrap().server_version;
    let major: u32 = server.split('.').next().unwrap().parse().unwrap();
    let expected = if major >= 25 { ArchiveFormat::OciArchive } else { ArchiveFormat::DockerArchive };
    assert_eq!(sniff_archive_format(&archive[..archive.len().min(4096)]), Some(expected), "engine {server}");

    engine.remove_image(&reference, false).await.unwrap();
    assert!(engine.inspect_image(&reference).await.unwrap().is_none());

    let loaded = engine.load_image(reader_from_bytes(archive)).await.unwrap();
    assert_eq!(loaded.references, [reference.as_str()]);
    let info = engine.inspect_image(&reference).await.unwrap().expect("loaded");
    assert_eq!(info.id, id);

    // A load sets no tag time; a tag does: what tells image garbage collection an image was
    // just pulled (s3dock's pull tags what it brings in).
    assert!(info.last_tagged.is_none(), "{info:?}");
    let (repo_name, tag) = reference.rsplit_once(':').unwrap();
    engine.tag_image(&id, repo_name, tag).await.unwrap();
    let tagged = engine.inspect_image(&reference).await.unwrap().unwrap().last_tagged.expect("a tag time");
    assert!((chrono::Utc::now() - tagged).num_seconds().abs() < 120, "{tagged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_whose_input_fails_loads_nothing() {
    let engine = engine_or_skip!();
    let repo = unique_repo();
    let reference = format!("{repo}:20250721-2118-f7a5a27");
    let cleanup = Cleanup::new(&engine);
    cleanup.image(reference.clone());
    // Big enough that the upload takes many chunks.
    let payload: String = (0..200_000).map(|i| format!("{i:07}\n")).collect();
    build_small(&engine, &reference, &payload).await;
    let archive = saved(&engine, &reference).await;
    assert!(archive.len() > 1_000_000, "{}", archive.len());
    engine.remove_image(&reference, false).await.unwrap();

    // Failing half-way, and failing after every byte was delivered (how the pull path reports a
    // checksum mismatch found at the end of the download): nothing may be loaded either way.
    for fail_at in [archive.len() / 2, archive.len()] {
        let reader = FailingReader::new(archive.clone(), fail_at, "checksum mismatch");
        match engine.load_image(Box::pin(reader)).await {
            Err(e @ EngineError::Io { .. }) => {
                assert!(e.to_string().contains("checksum mismatch"), "{e}");
                assert!(e.to_string().contains("nothing was loaded"), "{e}");
            }
            other => panic!("failing at {fail_at}/{}: expected an input error, got {other:?}", archive.len()),
        }
        assert!(
            engine.inspect_image(&reference).await.unwrap().is_none(),
            "failing at {fail_at}/{}: the image was loaded anyway",
            archive.len()
        );
        assert!(engine.list_images(&repo).await.unwrap().is_empty());
    }

    // The same bytes, delivered whole, load: the failures above came from the cut alone.
    engine.load_image(reader_from_bytes(archive)).await.unwrap();
    assert!(engine.inspect_image(&reference).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_something_that_is_not_an_image_archive_fails() {
    let engine = engine_or_skip!();
    let garbage = Bytes::from("this is not a docker save archive\n".repeat(1000));
    match engine.load_image(reader_from_bytes(garbage)).await {
        Err(e @ EngineError::Load { .. }) => assert!(!e.is_retryable(), "{e}"),
        other => panic!("expected a load error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_list_tag_and_remove() {
    let engine = engine_or_skip!();
    let repo = unique_repo();
    let first = format!("{repo}:20250721-2118-f7a5a27");
    let second = format!("{repo}:20250722-0900-0123456");
    let cleanup = Cleanup::new(&engine);
    cleanup.image(first.clone());
    cleanup.image(second.clone());
    let id = build_small(&engine, &first, "listing").await;

    let info = engine.inspect_image(&first).await.unwrap().unwrap();
    assert_eq!(info.id, id);
    assert_eq!(info.repo_tags, [first.as_str()]);
    assert_eq!(info.os, "linux");
    assert!(!info.architecture.is_empty());
    assert!(info.platform().starts_with("linux/"));
    assert!(info.created.is_some());
    assert!(engine.inspect_image(&id).await.unwrap().is_some(), "inspect by id");

    engine.tag_image(&id, &repo, "20250722-0900-0123456").await.unwrap();
    let listed = engine.list_images(&repo).await.unwrap();
    assert_eq!(listed.len(), 1);
    let mut tags = listed[0].repo_tags.clone();
    tags.sort();
    assert_eq!(tags, [first.clone(), second.clone()]);
    assert_eq!(listed[0].id, id);
    // A repository whose name only starts the same is another repository.
    assert!(engine.list_images(&format!("{repo}x")).await.unwrap().is_empty());
    assert!(engine.list_images(&repo[..repo.len() - 1]).await.unwrap().is_empty());

    engine.remove_image(&second, false).await.unwrap();
    assert_eq!(engine.inspect_image(&first).await.unwrap().unwrap().repo_tags, [first.as_str()]);
    engine.remove_image(&first, false).await.unwrap();
    assert!(engine.inspect_image(&first).await.unwrap().is_none());
    assert!(engine.inspect_image(&id).await.unwrap().is_none(), "the last tag took the image with it");
    // Removing again is not an error.
    engine.remove_image(&first, false).await.unwrap();

    let missing = engine.save_image(&first).await.err().expect("saving a missing image fails");
    assert!(missing.is_image_not_found(), "{missing:?}");
    assert!(missing.to_string().contains("s3dock build"), "{missing}");
    let missing = engine.tag_image(&first, &repo, "other").await.unwrap_err();
    assert!(missing.is_image_not_found(), "{missing:?}");
}
