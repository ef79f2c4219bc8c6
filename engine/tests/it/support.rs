//! Shared fixtures: the engine (or a skip), unique names, cleanup, git repositories, images.

use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use git2::{IndexAddOption, Oid, Repository, Signature, Time};
use s3dock_engine::{BollardEngine, BuildOptions, DockerEngine, context_tar};
use tokio::io::{AsyncRead, ReadBuf};

/// The engine from `DOCKER_HOST` or the default socket; `None` (after saying so) when there is
/// none and `CI` is not set.
pub async fn engine() -> Option<BollardEngine> {
    match BollardEngine::connect().await {
        Ok(engine) => Some(engine),
        Err(e) => {
            s3dock_testkit::skip_unless_ci(&format!("the Docker engine ({e})"), "start it, or point DOCKER_HOST at one")
        }
    }
}

/// The engine, or return from the test (skipped).
macro_rules! engine_or_skip {
    () => {
        match crate::support::engine().await {
            Some(engine) => engine,
            None => return,
        }
    };
}
pub(crate) use engine_or_skip;

/// `s3dock-test-<12 hex>`: a valid app name and image repository no other test uses.
pub fn unique_repo() -> String {
    s3dock_testkit::unique("s3dock-test")
}

/// Removes the containers and images it was told about, also when the test panics. Needs the
/// multi-threaded runtime (it blocks in place on drop).
pub struct Cleanup {
    engine: BollardEngine,
    containers: Mutex<Vec<String>>,
    images: Mutex<Vec<String>>,
}

impl Cleanup {
    pub fn new(engine: &BollardEngine) -> Self {
        Cleanup { engine: engine.clone(), containers: Mutex::new(Vec::new()), images: Mutex::new(Vec::new()) }
    }

    pub fn image(&self, reference: impl Into<String>) {
        self.images.lock().unwrap().push(reference.into());
    }

    pub fn container(&self, id: impl Into<String>) {
        self.containers.lock().unwrap().push(id.into());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let containers = std::mem::take(&mut *self.containers.lock().unwrap_or_else(|e| e.into_inner()));
        let images = std::mem::take(&mut *self.images.lock().unwrap_or_else(|e| e.into_inner()));
        let engine = self.engine.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                for id in containers {
                    if let Err(e) = engine.remove_container(&id, true).await {
                        eprintln!("cleanup: could not remove container {id}: {e}");
                    }
                }
                for reference in images {
                    if let Err(e) = engine.remove_image(&reference, true).await {
                        eprintln!("cleanup: could not remove image {reference}: {e}");
                    }
                }
            })
        });
    }
}

pub use s3dock_testkit::images::{busybox, isolating_label};

/// Writes a file, creating its directory; executables (ELF) get mode 0755.
pub fn write_file(path: &Path, data: &[u8]) {
    let (dir, name) = (path.parent().unwrap(), path.file_name().unwrap().to_string_lossy().into_owned());
    s3dock_testkit::images::write_context(dir, &[(name, data.to_vec())]);
}

/// 2025-07-21T23:18:59+02:00: the commit time of every fixture commit (21:18 UTC).
pub const WHEN: i64 = 1_753_132_739;

/// A git repository in a temporary directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub repo: Repository,
}

impl Fixture {
    pub fn new(files: &[(&str, &[u8])]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let fixture = Fixture { dir, repo };
        for (name, data) in files {
            fixture.write(name, data);
        }
        fixture
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, data: &[u8]) {
        write_file(&self.path().join(rel), data);
    }

    /// `git add -A && git commit`, at [`WHEN`] with a +02:00 offset.
    pub fn commit(&self, message: &str) -> Oid {
        let mut index = self.repo.index().unwrap();
        index.add_all(["*"], IndexAddOption::DEFAULT, None).unwrap();
        index.update_all(["*"], None).unwrap();
        index.write().unwrap();
        let tree = self.repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = Signature::new("Tester", "tester@example.com", &Time::new(WHEN, 120)).unwrap();
        let parent = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<_> = parent.iter().collect();
        self.repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).unwrap()
    }
}

/// Files of an app served by busybox httpd on 8080 (with a Docker health check), whose page
/// contains `marker`. `repo` isolates its layers, see [`isolating_label`].
pub fn httpd_app_files(repo: &str, marker: &str) -> Vec<(String, Vec<u8>)> {
    let page = format!("<h1>{marker}</h1>\n");
    s3dock_testkit::images::httpd_files(repo, None, true, &[("index.html", page.as_bytes())])
}

/// Builds `reference` from files in a temporary directory (no git involved).
pub async fn build_from_files(engine: &BollardEngine, reference: &str, files: &[(String, Vec<u8>)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    s3dock_testkit::images::write_context(dir.path(), files);
    let (tar, dockerfile) = context_tar(dir.path(), &dir.path().join("Dockerfile")).unwrap();
    let opts = BuildOptions { tags: vec![reference.to_owned()], dockerfile, ..Default::default() };
    engine.build_image(tar, &opts).await.unwrap_or_else(|e| panic!("building {reference}: {e}")).image_id
}

/// A small image: one file, `FROM scratch`.
pub async fn build_small(engine: &BollardEngine, reference: &str, content: &str) -> String {
    let repo = reference.rsplit_once(':').map_or(reference, |(repo, _)| repo);
    let dockerfile = format!("FROM scratch\n{}COPY hello.txt /hello.txt\n", isolating_label(repo));
    let files =
        vec![("Dockerfile".to_owned(), dockerfile.into_bytes()), ("hello.txt".to_owned(), content.as_bytes().to_vec())];
    build_from_files(engine, reference, &files).await
}

/// Every file path inside the layers of a `docker save` archive (classic or OCI).
pub fn files_in_saved_image(archive: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut outer = tar::Archive::new(archive);
    for entry in outer.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        // Layers are tars themselves: `<id>/layer.tar` or `blobs/sha256/<digest>`.
        if data.len() < 1024 || &data[257..262] != b"ustar" {
            continue;
        }
        let mut layer = tar::Archive::new(data.as_slice());
        for file in layer.entries().unwrap() {
            let file = file.unwrap();
            out.push(file.path().unwrap().to_string_lossy().trim_end_matches('/').to_owned());
        }
    }
    out.sort();
    out
}

/// Reads `data` in small chunks, then fails with `error` after `fail_at` bytes instead of
/// continuing (or instead of ending, when `fail_at == data.len()`).
pub struct FailingReader {
    data: Bytes,
    pos: usize,
    fail_at: usize,
    error: &'static str,
}

impl FailingReader {
    pub fn new(data: Bytes, fail_at: usize, error: &'static str) -> Self {
        FailingReader { data, pos: 0, fail_at, error }
    }
}

impl AsyncRead for FailingReader {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.pos >= self.fail_at {
            return Poll::Ready(Err(std::io::Error::other(self.error)));
        }
        let end = self.fail_at.min(self.pos + 64 * 1024).min(self.pos + buf.remaining());
        let chunk = self.data.slice(self.pos..end);
        buf.put_slice(&chunk);
        self.pos = end;
        Poll::Ready(Ok(()))
    }
}
