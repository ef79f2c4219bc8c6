//! `build`: git facts, tags, labels, `.dockerignore` and build errors, on the real engine.

use std::path::PathBuf;

use s3dock_core::names::AppName;
use s3dock_engine::build::{LABEL_APP, LABEL_CREATED, LABEL_REVISION, LABEL_SOURCE, LABEL_TAG};
use s3dock_engine::{BuildError, BuildRequest, DockerEngine, EngineError, GitError, build, labels_to_git};

use crate::support::{
    Cleanup, Fixture, engine_or_skip, files_in_saved_image, httpd_app_files, isolating_label, unique_repo,
};

fn request(app: &str, context_dir: PathBuf) -> BuildRequest {
    BuildRequest {
        app: AppName::parse(app).unwrap(),
        context_dir,
        dockerfile: None,
        platform: None,
        build_args: Vec::new(),
        rebuild: false,
    }
}

fn httpd_fixture(app: &str, marker: &str) -> Fixture {
    let files = httpd_app_files(app, marker);
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    Fixture::new(&refs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_checkout_builds_with_the_commit_tag_and_labels() {
    let engine = engine_or_skip!();
    let app = unique_repo();
    let cleanup = Cleanup::new(&engine);
    let fx = httpd_fixture(&app, "clean");
    fx.repo.remote("origin", "https://ci-bot:t0ken@example.com/team/web.git").unwrap();
    let commit = fx.commit("first").to_string();
    let expected = format!("{app}:20250721-2118-{}", &commit[..7]);
    cleanup.image(expected.clone());

    let first = build(&engine, &request(&app, fx.path().to_path_buf())).await.unwrap();
    assert_eq!(first.image_ref.to_string(), expected);
    assert_eq!(first.git.commit, commit);
    assert!(first.image_id.starts_with("sha256:"), "{}", first.image_id);
    assert!(first.log.iter().any(|l| l.contains("COPY busybox")), "{:?}", first.log);

    let info = engine.inspect_image(&expected).await.unwrap().expect("the image is tagged APP:TAG");
    assert_eq!(info.id, first.image_id);
    assert_eq!(info.labels[LABEL_REVISION], commit);
    assert_eq!(info.labels[LABEL_CREATED], "2025-07-21T21:18:59Z");
    assert_eq!(info.labels[LABEL_SOURCE], "https://example.com/team/web.git");
    assert_eq!(info.labels[LABEL_APP], app);
    assert_eq!(info.labels[LABEL_TAG], expected.rsplit_once(':').unwrap().1);
    let back = labels_to_git(&info.labels).unwrap();
    assert_eq!((back.commit.as_str(), back.committed_at), (commit.as_str(), first.git.committed_at));

    // The same commit builds to the same tag; with the same inputs the engine's image is reused.
    assert!(!first.reused);
    let second = build(&engine, &request(&app, fx.path().to_path_buf())).await.unwrap();
    assert_eq!(second.image_ref, first.image_ref);
    assert_eq!(second.image_id, first.image_id);
    assert!(second.reused);
    // --rebuild builds (from the builder's cache: the same image), other build args build anew.
    let forced =
        build(&engine, &BuildRequest { rebuild: true, ..request(&app, fx.path().to_path_buf()) }).await.unwrap();
    assert!(!forced.reused);
    assert_eq!(forced.image_id, first.image_id);
    let with_arg =
        BuildRequest { build_args: vec![("X".into(), "1".into())], ..request(&app, fx.path().to_path_buf()) };
    assert!(!build(&engine, &with_arg).await.unwrap().reused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirty_tree_is_refused_and_builds_nothing() {
    let engine = engine_or_skip!();
    let app = unique_repo();
    let _cleanup = Cleanup::new(&engine);
    let fx = httpd_fixture(&app, "dirty");
    fx.commit("first");
    fx.write("www/index.html", b"<h1>edited, not committed</h1>");
    match build(&engine, &request(&app, fx.path().to_path_buf())).await {
        Err(BuildError::Git(GitError::Dirty { files, .. })) => assert_eq!(files, ["www/index.html"]),
        other => panic!("expected a dirty-tree refusal, got {other:?}"),
    }
    assert!(engine.list_images(&app).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untracked_files_and_a_detached_head_build() {
    let engine = engine_or_skip!();
    let app = unique_repo();
    let cleanup = Cleanup::new(&engine);
    let fx = httpd_fixture(&app, "v1");
    let first = fx.commit("first");
    fx.write("www/index.html", b"<h1>v2</h1>");
    let second = fx.commit("second");
    fx.write("notes.txt", b"untracked, not committed");

    let head = build(&engine, &request(&app, fx.path().to_path_buf())).await.unwrap();
    cleanup.image(head.image_ref.to_string());
    assert_eq!(head.git.commit, second.to_string());

    fx.repo.set_head_detached(first).unwrap();
    fx.repo.checkout_head(Some(git2::build::CheckoutBuilder::new().force())).unwrap();
    let detached = build(&engine, &request(&app, fx.path().to_path_buf())).await.unwrap();
    cleanup.image(detached.image_ref.to_string());
    assert_eq!(detached.git.commit, first.to_string());
    assert_eq!(detached.image_ref.tag.hash7(), &first.to_string()[..7]);
    assert_ne!(detached.image_id, head.image_id);
    assert_eq!(engine.list_images(&app).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerignore_keeps_files_out_of_the_image() {
    let engine = engine_or_skip!();
    let app = unique_repo();
    let cleanup = Cleanup::new(&engine);
    // The Dockerfile lives outside the context directory, as in many monorepos.
    let dockerfile = format!("FROM scratch\n{}COPY . /ctx/\n", isolating_label(&app));
    let fx = Fixture::new(&[
        ("docker/Dockerfile", dockerfile.as_bytes()),
        ("ctx/keep.txt", b"keep"),
        ("ctx/secret.txt", b"s3cr3t"),
        ("ctx/logs/debug.log", b"noise"),
        ("ctx/logs/keep.log", b"kept"),
        ("ctx/.dockerignore", b"# not for the image\nsecret.txt\nlogs\n!logs/keep.log\n"),
    ]);
    fx.commit("first");
    let mut req = request(&app, fx.path().join("ctx"));
    req.dockerfile = Some(fx.path().join("docker/Dockerfile"));
    let built = build(&engine, &req).await.unwrap();
    cleanup.image(built.image_ref.to_string());

    let saved = engine.save_image(&built.image_ref.to_string()).await.unwrap();
    let archive = s3dock_core::store::read_to_vec(saved).await.unwrap();
    let files = files_in_saved_image(&archive);
    assert!(files.contains(&"ctx/keep.txt".to_owned()), "{files:?}");
    assert!(files.contains(&"ctx/logs/keep.log".to_owned()), "{files:?}");
    for absent in ["ctx/secret.txt", "ctx/logs/debug.log", "ctx/.dockerfile.s3dock"] {
        assert!(!files.contains(&absent.to_owned()), "{absent} is in the image: {files:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_build_reports_the_builders_error() {
    let engine = engine_or_skip!();
    let app = unique_repo();
    let _cleanup = Cleanup::new(&engine);
    let fx = Fixture::new(&[("Dockerfile", b"FROM scratch\nCOPY missing.txt /missing.txt\n"), ("present.txt", b"x")]);
    fx.commit("first");
    match build(&engine, &request(&app, fx.path().to_path_buf())).await {
        Err(BuildError::Engine(e @ EngineError::Build { .. })) => {
            assert!(e.to_string().contains("missing.txt"), "{e}");
            assert!(!e.is_retryable());
        }
        other => panic!("expected a build error, got {other:?}"),
    }
    assert!(engine.list_images(&app).await.unwrap().is_empty());
}
