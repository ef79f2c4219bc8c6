//! Push and pull through the real engine, to a local store and to S3 on LocalStack.

use std::sync::Arc;
use std::time::Duration;

use s3dock_core::clock::SystemClock;
use s3dock_core::gzip::GzipOptions;
use s3dock_core::names::{AppName, EnvName, ImageRef, Version};
use s3dock_core::registry::{EventMode, HistoryQuery, PromoteSource, Registry};
use s3dock_core::store::{LocalStore, ObjectStore, list_all};
use s3dock_core::transfer::Progress;
use s3dock_engine::ship::{self, PullRequest, PullTarget, PushRequest, ShipError};
use s3dock_engine::{
    BollardEngine, BuildOptions, BuildRequest, ContainerSpec, DockerEngine, PortPublish, Protocol, context_tar,
};
use tokio_util::sync::CancellationToken;

use crate::support::*;

fn registry(store: Arc<dyn ObjectStore>) -> Registry {
    Registry::new(store, Arc::new(SystemClock), "tester", EventMode::Inline)
}

fn local_registry() -> (tempfile::TempDir, Arc<LocalStore>, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path()).unwrap());
    let reg = registry(store.clone());
    (dir, store, reg)
}

/// Builds an httpd app with `s3dock build` semantics in a fresh git repository.
async fn build_app(engine: &BollardEngine, app: &str, marker: &str) -> (Fixture, ImageRef, String) {
    let files = httpd_app_files(app, marker);
    let fx = Fixture::new(&files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect::<Vec<_>>());
    fx.commit("app");
    let req = BuildRequest {
        app: AppName::parse(app).unwrap(),
        context_dir: fx.path().to_path_buf(),
        dockerfile: None,
        platform: None,
        build_args: vec![],
        rebuild: false,
    };
    let built = s3dock_engine::build(engine, &req).await.expect("build");
    (fx, built.image_ref, built.image_id)
}

fn push_req(image: &ImageRef) -> PushRequest {
    PushRequest { image: image.clone(), git: None, gzip: GzipOptions::default(), force: false }
}

async fn fetch(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..50 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let _ = s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.") {
                return out;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing answered on 127.0.0.1:{port}");
}

/// build -> push -> tag -> promote -> rmi -> pull -> run, keeping the image id.
async fn round_trip(engine: &BollardEngine, store: Arc<dyn ObjectStore>, label: &str) {
    let cleanup = Cleanup::new(engine);
    let app = unique_repo();
    let (_fx, image, id) = build_app(engine, &app, label).await;
    cleanup.image(image.to_string());
    let reg = registry(store.clone());

    let progress = Progress::default();
    let pushed = ship::push(engine, &reg, &push_req(&image), &progress, &CancellationToken::new()).await.expect("push");
    assert!(pushed.outcome.skipped.is_none(), "{:?}", pushed.outcome.skipped);
    assert!(pushed.tar_bytes > 1_000_000, "the tar holds busybox: {}", pushed.tar_bytes);
    let meta = reg.image(&image).await.unwrap().metadata;
    assert_eq!(meta.image_id.as_deref(), Some(id.as_str()));
    assert_eq!(meta.format.as_deref(), Some("docker-archive"));
    assert!(meta.git_hash.len() == 40);

    // Pushing again skips without exporting.
    let again =
        ship::push(engine, &reg, &push_req(&image), &Progress::default(), &CancellationToken::new()).await.unwrap();
    assert!(again.outcome.skipped.as_deref().unwrap_or_default().contains("image id"), "{:?}", again.outcome.skipped);
    assert_eq!(again.tar_bytes, 0);

    reg.tag(&image, &Version::parse("v1.0.0").unwrap(), false).await.unwrap();
    reg.promote(
        &PromoteSource::Version(image.app.clone(), Version::parse("v1.0.0").unwrap()),
        &EnvName::parse("production").unwrap(),
    )
    .await
    .unwrap();

    // A pull while the engine has the image: skipped, nothing downloaded.
    let req = PullRequest {
        app: image.app.clone(),
        target: PullTarget::Env(EnvName::parse("production").unwrap()),
        keep: None,
    };
    let present = ship::pull(engine, &reg, &req, &Progress::default()).await.unwrap();
    assert!(present.skipped.is_some());
    assert_eq!(present.bytes, 0);

    engine.remove_image(&image.to_string(), true).await.unwrap();
    assert!(engine.inspect_image(&image.to_string()).await.unwrap().is_none());
    let progress = Progress::default();
    let pulled = ship::pull(engine, &reg, &req, &progress).await.expect("pull");
    assert!(pulled.skipped.is_none());
    assert_eq!(pulled.image, image);
    // Whole, or (when another image here shares its busybox layer) only what the engine lacks.
    match &pulled.partial {
        None => assert_eq!(pulled.bytes, meta.size),
        Some(p) => assert_eq!(pulled.bytes, meta.size - p.bytes_skipped),
    }
    assert_eq!(
        engine.inspect_image(&image.to_string()).await.unwrap().unwrap().id,
        id,
        "the round trip keeps the image id"
    );

    // And it runs.
    let name = format!("{app}-run");
    let spec = ContainerSpec {
        name: name.clone(),
        image: image.to_string(),
        ports: vec![PortPublish {
            container_port: 8080,
            protocol: Protocol::Tcp,
            host_ip: Some("127.0.0.1".into()),
            host_port: None,
        }],
        ..Default::default()
    };
    let cid = engine.create_container(&spec).await.unwrap();
    cleanup.container(cid.clone());
    engine.start_container(&cid).await.unwrap();
    let port = engine.inspect_container(&cid).await.unwrap().unwrap().host_port(8080).unwrap();
    let page = fetch(port).await;
    assert!(page.contains(label), "{page}");

    let pushes =
        reg.history(&image.app, &HistoryQuery { types: vec!["push".into()], ..Default::default() }).await.unwrap();
    assert_eq!(pushes.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_through_a_local_store() {
    let engine = engine_or_skip!();
    let (_dir, store, _) = local_registry();
    round_trip(&engine, store, "local round trip").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_through_localstack() {
    let engine = engine_or_skip!();
    let Some(store) = s3dock_testkit::s3::s3_store("ship-round-trip").await else { return };
    round_trip(&engine, Arc::new(store), "s3 round trip").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn same_tag_different_content_archives_the_old_pair() {
    let engine = engine_or_skip!();
    let cleanup = Cleanup::new(&engine);
    let (_dir, store, reg) = local_registry();
    let app = unique_repo();
    let (fx, image, first_id) = build_app(&engine, &app, "first").await;
    cleanup.image(image.to_string());
    ship::push(&engine, &reg, &push_req(&image), &Progress::default(), &CancellationToken::new()).await.unwrap();

    // Same commit, other content: build by hand with the labels s3dock build would write.
    let git = s3dock_engine::inspect_repo(fx.path()).unwrap();
    let files = httpd_app_files(&app, "second");
    let dir = tempfile::tempdir().unwrap();
    for (n, d) in &files {
        write_file(&dir.path().join(n), d);
    }
    let (tar, dockerfile) = context_tar(dir.path(), &dir.path().join("Dockerfile")).unwrap();
    let opts = BuildOptions {
        tags: vec![image.to_string()],
        dockerfile,
        labels: s3dock_engine::build::build_labels(&image, &git),
        ..Default::default()
    };
    let second_id = engine.build_image(tar, &opts).await.unwrap().image_id;
    assert_ne!(first_id, second_id);
    let out =
        ship::push(&engine, &reg, &push_req(&image), &Progress::default(), &CancellationToken::new()).await.unwrap();
    assert_eq!(out.outcome.archived.len(), 2, "{:?}", out.outcome.archived);
    let archived = list_all(&*store, "archive/").await.unwrap();
    assert_eq!(archived.len(), 2);
    assert_eq!(reg.image(&image).await.unwrap().metadata.image_id.as_deref(), Some(second_id.as_str()));
    let old: s3dock_core::docs::ImageMetadata = s3dock_core::docs::decode(
        "old",
        &std::fs::read(store.path_of(&archived.iter().find(|o| o.key.as_str().ends_with(".json")).unwrap().key))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(old.image_id.as_deref(), Some(first_id.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_archive_loads_nothing() {
    let engine = engine_or_skip!();
    let cleanup = Cleanup::new(&engine);
    let (_dir, store, reg) = local_registry();
    let app = unique_repo();
    let (_fx, image, _) = build_app(&engine, &app, "corrupt me").await;
    cleanup.image(image.to_string());
    ship::push(&engine, &reg, &push_req(&image), &Progress::default(), &CancellationToken::new()).await.unwrap();
    reg.tag(&image, &Version::parse("1.0.0").unwrap(), false).await.unwrap();
    engine.remove_image(&image.to_string(), true).await.unwrap();

    // Flip one byte in the middle of the top layer's range (which every pull downloads, even
    // one that finds the lower layers on the host): same size, different MD5.
    let path = store.path_of(&s3dock_core::layout::image_archive(&image.app, &image.tag));
    let mut bytes = std::fs::read(&path).unwrap();
    let index = reg.image(&image).await.unwrap().metadata.layers.expect("an index");
    let top = index.diff_ids.last().unwrap();
    let range = index.ranges.iter().find(|r| r.diff_id.as_ref() == Some(top)).unwrap();
    let mid = (range.offset + range.length / 2) as usize;
    bytes[mid] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();

    let req = PullRequest {
        app: image.app.clone(),
        target: PullTarget::Version(Version::parse("1.0.0").unwrap()),
        keep: None,
    };
    let err = ship::pull(&engine, &reg, &req, &Progress::default()).await.unwrap_err();
    // The flipped byte is caught by gunzip's CRC or by the MD5 at the end, whichever comes
    // first; either way the load is aborted and the message names the cause.
    assert!(matches!(err, ShipError::Integrity { .. }), "{err:?}");
    let msg = err.to_string();
    eprintln!("corrupted pull: {msg}");
    assert!(msg.contains("nothing was loaded"), "{msg}");
    assert!(engine.inspect_image(&image.to_string()).await.unwrap().is_none(), "nothing was loaded");
}

/// Regression: an archive cut inside a gzip member whose metadata matches it (a push of a
/// truncated stream, or metadata rewritten to match) verified, then failed in gunzip with
/// UnexpectedEof, which was reported as "unavailable" (exit 6, retry) instead of corrupt (5).
#[tokio::test(flavor = "multi_thread")]
async fn an_archive_cut_short_whose_checksum_matches_is_corrupt_not_unavailable() {
    use s3dock_core::docs::{self, ImageMetadata};
    use s3dock_core::store::{Precondition, read_small};
    let engine = engine_or_skip!();
    let cleanup = Cleanup::new(&engine);
    let (_dir, store, reg) = local_registry();
    let app = unique_repo();
    let (_fx, image, _) = build_app(&engine, &app, "cut me short").await;
    cleanup.image(image.to_string());
    ship::push(&engine, &reg, &push_req(&image), &Progress::default(), &CancellationToken::new()).await.unwrap();
    reg.tag(&image, &Version::parse("1.0.0").unwrap(), false).await.unwrap();
    engine.remove_image(&image.to_string(), true).await.unwrap();

    let archive = s3dock_core::layout::image_archive(&image.app, &image.tag);
    let meta_key = s3dock_core::layout::image_metadata(&image.app, &image.tag);
    let bytes = std::fs::read(store.path_of(&archive)).unwrap();
    let cut = bytes[..bytes.len() * 2 / 3].to_vec();
    let d = s3dock_core::digest::digest_reader(&cut[..]).unwrap();
    let info = store.put_bytes(&archive, cut.into(), Precondition::None).await.unwrap();
    let (raw, _) = read_small(&*store, &meta_key, 1 << 20).await.unwrap().unwrap();
    let mut meta: ImageMetadata = docs::decode(meta_key.as_str(), &raw).unwrap();
    (meta.checksum, meta.sha256, meta.size, meta.archive_etag) = (d.md5, Some(d.sha256), d.size, Some(info.etag.0));
    // Rewritten by hand like an older writer would: no layer index.
    meta.layers = None;
    store.put_bytes(&meta_key, docs::encode(&meta).into(), Precondition::None).await.unwrap();

    let req = PullRequest {
        app: image.app.clone(),
        target: PullTarget::Version(Version::parse("1.0.0").unwrap()),
        keep: None,
    };
    let err = ship::pull(&engine, &reg, &req, &Progress::default()).await.unwrap_err();
    assert!(matches!(err, ShipError::Integrity { .. }), "{err:?}");
    assert!(!err.is_retryable(), "{err}");
    assert!(engine.inspect_image(&image.to_string()).await.unwrap().is_none(), "nothing was loaded");
}

#[tokio::test(flavor = "multi_thread")]
async fn push_refuses_what_it_cannot_vouch_for() {
    let engine = engine_or_skip!();
    let cleanup = Cleanup::new(&engine);
    let (_dir, _store, reg) = local_registry();
    let app = unique_repo();

    // Not in the engine.
    let missing = ImageRef::parse(&format!("{app}:20250721-2118-f7a5a27")).unwrap();
    let err = ship::push(&engine, &reg, &push_req(&missing), &Progress::default(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ShipError::Engine(ref e) if e.is_image_not_found()), "{err}");

    // Not built by s3dock: no provenance labels.
    let plain = ImageRef::parse(&format!("{app}:20250721-2118-f7a5a27")).unwrap();
    build_small(&engine, &plain.to_string(), "plain").await;
    cleanup.image(plain.to_string());
    let err = ship::push(&engine, &reg, &push_req(&plain), &Progress::default(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--git-commit"), "{err}");

    // Built by s3dock for another app, retagged.
    let (_fx, image, _) = build_app(&engine, &app, "x").await;
    cleanup.image(image.to_string());
    let other = format!("{app}-other");
    engine.tag_image(&image.to_string(), &other, &image.tag.to_string()).await.unwrap();
    cleanup.image(format!("{other}:{}", image.tag));
    let retagged = ImageRef::parse(&format!("{other}:{}", image.tag)).unwrap();
    let err = ship::push(&engine, &reg, &push_req(&retagged), &Progress::default(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("built by s3dock for app"), "{err}");

    // A tag that is not the commit's.
    let wrong = ImageRef::parse(&format!("{app}:20200101-0000-0000000")).unwrap();
    engine.tag_image(&image.to_string(), &app, &wrong.tag.to_string()).await.unwrap();
    cleanup.image(wrong.to_string());
    let err = ship::push(&engine, &reg, &push_req(&wrong), &Progress::default(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("instead"), "{err}");

    assert!(list_all(&**reg.store(), "").await.unwrap().is_empty(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_keep_removes_old_unused_images() {
    let engine = engine_or_skip!();
    let cleanup = Cleanup::new(&engine);
    let (_dir, _store, reg) = local_registry();
    let app = unique_repo();
    let (_fx, image, _) = build_app(&engine, &app, "keep").await;
    cleanup.image(image.to_string());
    ship::push(&engine, &reg, &push_req(&image), &Progress::default(), &CancellationToken::new()).await.unwrap();
    reg.tag(&image, &Version::parse("1.0.0").unwrap(), false).await.unwrap();
    // Three older local tags of the same app, one of them used by a container.
    let olds = ["20240101-0000-aaaaaaa", "20240102-0000-bbbbbbb", "20240103-0000-ccccccc"];
    for t in olds {
        engine.tag_image(&image.to_string(), &app, t).await.unwrap();
        cleanup.image(format!("{app}:{t}"));
    }
    // The oldest is used by a (stopped) container: never removed.
    let used = build_small(&engine, &format!("{app}:20230101-0000-ddddddd"), "in use").await;
    cleanup.image(format!("{app}:20230101-0000-ddddddd"));
    let cid = engine
        .create_container(&ContainerSpec {
            name: format!("{app}-user"),
            image: used.clone(),
            cmd: Some(vec!["/nothing".into()]),
            ..Default::default()
        })
        .await
        .unwrap();
    cleanup.container(cid);
    let req = PullRequest {
        app: image.app.clone(),
        target: PullTarget::Version(Version::parse("1.0.0").unwrap()),
        keep: Some(2),
    };
    let out = ship::pull(&engine, &reg, &req, &Progress::default()).await.unwrap();
    let mut removed = out.removed.clone();
    removed.sort();
    assert_eq!(removed, [format!("{app}:20240101-0000-aaaaaaa"), format!("{app}:20240102-0000-bbbbbbb")]);
    assert!(engine.inspect_image(&format!("{app}:20230101-0000-ddddddd")).await.unwrap().is_some(), "in use: kept");
    assert!(
        engine.inspect_image(&format!("{app}:20240103-0000-ccccccc")).await.unwrap().is_some(),
        "among the newest 2"
    );
    assert!(engine.inspect_image(&image.to_string()).await.unwrap().is_some(), "the current image stays");
}

/// An archive in the bucket naming another image too (`RepoTags` with an extra tag, as a host
/// where the image had several tags would save it): `docker load` moved that other image's tag
/// on the pulling host, silently. The pull gives the archive's image its own name only.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_never_moves_the_tags_of_other_images() {
    use std::io::{Read, Write};

    let engine = engine_or_skip!();
    let cleanup = Cleanup::new(&engine);
    let (_dir, store, reg) = local_registry();
    let app = unique_repo();
    let (_fx, image, _) = build_app(&engine, &app, "pulled one").await;
    cleanup.image(image.to_string());
    ship::push(&engine, &reg, &push_req(&image), &Progress::default(), &CancellationToken::new()).await.unwrap();
    reg.tag(&image, &Version::parse("1.0.0").unwrap(), false).await.unwrap();

    // Another image on the host, whose tag the archive will also claim.
    let victim = format!("{}:latest", unique_repo());
    cleanup.image(victim.clone());
    let victim_id = build_small(&engine, &victim, "the victim").await;

    // The archive, rewritten to name the victim too; its metadata follows the new bytes.
    let archive_key = s3dock_core::layout::image_archive(&image.app, &image.tag);
    let archive_path = store.path_of(&archive_key);
    let mut tar_bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(&archive_path).unwrap()).read_to_end(&mut tar_bytes).unwrap();
    let mut rebuilt = tar::Builder::new(Vec::new());
    let mut outer = tar::Archive::new(&tar_bytes[..]);
    for entry in outer.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        let mut body = Vec::new();
        entry.read_to_end(&mut body).unwrap();
        if path.as_os_str() == "manifest.json" {
            let mut m: serde_json::Value = serde_json::from_slice(&body).unwrap();
            m[0]["RepoTags"].as_array_mut().unwrap().push(victim.clone().into());
            body = serde_json::to_vec(&m).unwrap();
            header.set_size(body.len() as u64);
            header.set_cksum();
        }
        rebuilt.append_data(&mut header, &path, &body[..]).unwrap();
    }
    let crafted = rebuilt.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&crafted).unwrap();
    let gzipped = gz.finish().unwrap();
    std::fs::write(&archive_path, &gzipped).unwrap();
    let d = s3dock_core::digest::digest_reader(&gzipped[..]).unwrap();
    let meta_path = store.path_of(&s3dock_core::layout::image_metadata(&image.app, &image.tag));
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["checksum"] = d.md5.into();
    meta["sha256"] = d.sha256.into();
    meta["size"] = d.size.into();
    // Rewritten by hand like an older writer would: no layer index.
    meta.as_object_mut().unwrap().remove("layers");
    // The metadata pins the archive object it commits: pin the crafted one.
    let archive_key = s3dock_core::layout::image_archive(&image.app, &image.tag);
    meta["archive_etag"] = store.head(&archive_key).await.unwrap().unwrap().etag.0.into();
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();

    engine.remove_image(&image.to_string(), true).await.unwrap();
    let req = PullRequest {
        app: image.app.clone(),
        target: PullTarget::Version(Version::parse("1.0.0").unwrap()),
        keep: None,
    };
    let pulled = ship::pull(&engine, &reg, &req, &Progress::default()).await.expect("pull");
    assert!(pulled.skipped.is_none());
    assert!(engine.inspect_image(&image.to_string()).await.unwrap().is_some(), "the image is loaded");
    let still = engine.inspect_image(&victim).await.unwrap().expect("the victim keeps its tag");
    assert_eq!(still.id, victim_id, "the other image's tag did not move");
}
