//! Push and pull: the Docker engine on one side, the bucket on the other, one streaming pass
//! in between, with memory bounded independently of the image's size.
//!
//! push: `docker save` -> gzip (parallel, in independent members) -> MD5 + SHA-256 + size ->
//! multipart upload; skipped without exporting when the bucket already has the image id.
//!
//! pull: download (resumable, hashed) -> gunzip -> `docker load`; skipped when the engine
//! already has the image id. The download turns its end into an error when the bytes do not
//! match the metadata, and `load_image` withholds the end of its upload until its input ended
//! cleanly, so a corrupted archive reaches `docker load` as an aborted upload and nothing is
//! loaded. After loading, the loaded image id is checked against the metadata.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use s3dock_core::gzip::{self, GzipOptions};
use s3dock_core::names::{AppName, EnvName, ImageRef, ImageTag, Version};
use s3dock_core::push::{PushFacts, PushOutcome, PushPlan};
use s3dock_core::registry::{Registry, Resolved};
use s3dock_core::store::BoxReader;
use s3dock_core::transfer::{self, Progress};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::archive::ArchiveFormat;
use crate::build::{LABEL_APP, labels_to_git};
use crate::docker::{ContainerFilter, DockerEngine, EngineError};

/// What went wrong shipping an image. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Registry(#[from] s3dock_core::Error),
    /// The request is refused as asked (an image s3dock did not build, of another app...).
    #[error("{message}")]
    Refused { message: String },
    /// The bytes are not what the bucket says they are.
    #[error("{message}")]
    Integrity { message: String },
}

impl ShipError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ShipError::Engine(e) => e.is_retryable(),
            ShipError::Registry(e) => e.is_retryable(),
            ShipError::Refused { .. } | ShipError::Integrity { .. } => false,
        }
    }
}

/// Git facts given by hand, for images not built by `s3dock build`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitOverride {
    pub commit: String,
    pub committed_at: DateTime<Utc>,
    pub source: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PushRequest {
    pub image: ImageRef,
    pub git: Option<GitOverride>,
    pub gzip: GzipOptions,
    /// Replace different content under a tag that something references (audited).
    pub force: bool,
}

#[derive(Debug)]
pub struct PushReport {
    pub image: ImageRef,
    pub image_id: String,
    /// The image's size in the engine: what `docker save` is expected to stream, roughly.
    pub image_size: u64,
    /// Tar bytes read from `docker save` (0 when skipped before exporting).
    pub tar_bytes: u64,
    pub outcome: PushOutcome,
    pub seconds: f64,
}

/// Pushes `req.image` from the engine to the bucket. `progress` counts the tar bytes exported
/// (its total is set to the image's size, an estimate). Cancelling `cancel` fails the export
/// stream, so the store aborts the upload and nothing is committed.
pub async fn push(
    engine: &dyn DockerEngine,
    registry: &Registry,
    req: &PushRequest,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<PushReport, ShipError> {
    let started = Instant::now();
    let image = &req.image;
    let reference = image.to_string();
    let info = engine
        .inspect_image(&reference)
        .await?
        .ok_or_else(|| EngineError::ImageNotFound { reference: reference.clone() })?;
    if let Some(app) = info.labels.get(LABEL_APP)
        && app != image.app.as_str()
    {
        return Err(ShipError::Refused {
            message: format!(
                "{reference} was built by s3dock for app {app}, not {}; push it as {app}:{} or rebuild it with `s3dock build {}`",
                image.app, image.tag, image.app
            ),
        });
    }
    let facts = match (&req.git, labels_to_git(&info.labels)) {
        (Some(g), _) => (g.commit.clone(), g.committed_at, g.source.clone()),
        (None, Some(g)) => (g.commit, g.committed_at, g.source),
        (None, None) => {
            return Err(ShipError::Refused {
                message: format!(
                    "{reference} was not built by s3dock: it has no org.opencontainers.image.revision/created labels; build it with `s3dock build {}`, or give its commit with --git-commit SHA --git-time RFC3339",
                    image.app
                ),
            });
        }
    };
    let (commit, committed_at, source) = facts;
    let expected_tag =
        ImageTag::from_commit(committed_at, &commit).map_err(|e| ShipError::Refused { message: e.to_string() })?;
    if expected_tag != image.tag {
        return Err(ShipError::Refused {
            message: format!(
                "{reference} carries commit {} from {}, whose s3dock tag is {expected_tag}, not {}; push {}:{expected_tag} instead",
                &commit[..commit.len().min(12)],
                committed_at.format("%Y-%m-%d %H:%M UTC"),
                image.tag,
                image.app
            ),
        });
    }
    progress.set_total(info.size);
    let plan = match registry.plan_push(image, &info.id, req.force).await? {
        PushPlan::Skip { record, reason } => {
            return Ok(PushReport {
                image: image.clone(),
                image_id: info.id.clone(),
                image_size: info.size,
                tar_bytes: 0,
                outcome: PushOutcome::skipped(record, reason),
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        PushPlan::Upload(plan) => plan,
    };
    let format = save_format(engine).await?;
    // `docker save` takes a while to send its first byte (the engine exports every layer
    // first): look up the ranges the bucket already holds meanwhile.
    let (saved, sources) = tokio::join!(engine.save_image(&reference), registry.reusable_ranges(image));
    let saved = saved?;
    let sources = sources?;
    let counted = transfer::counting(transfer::cancellable(saved, cancel.clone()), progress.clone());
    let reopen = reopen_save(engine, &reference, cancel, progress);
    let facts = PushFacts {
        image_id: info.id.clone(),
        git_hash: commit,
        git_time: expected_tag.time_str(),
        platform: Some(info.platform()),
        source,
        format: Some(format.as_str().to_owned()),
        tar_bytes: Some(progress.clone()),
    };
    // The layered layout, composed from ranges the bucket already holds where it can.
    let mut outcome = registry.push_layered_from(image, &facts, counted, &reopen, plan, req.gzip, sources).await?;
    outcome.image = image.clone();
    Ok(PushReport {
        image: image.clone(),
        image_id: info.id,
        image_size: info.size,
        tar_bytes: progress.bytes(),
        outcome,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Opens `docker save` of `reference` again (a composed push that has to be redone).
fn reopen_save<'a>(
    engine: &'a dyn DockerEngine,
    reference: &'a str,
    cancel: &'a CancellationToken,
    progress: &'a Progress,
) -> impl Fn() -> futures::future::BoxFuture<'a, s3dock_core::Result<BoxReader>> + Send + Sync + 'a {
    move || {
        Box::pin(async move {
            let saved = engine.save_image(reference).await.map_err(|e| s3dock_core::Error::Conflict {
                message: format!("{e}; nothing was committed — run the push again"),
            })?;
            Ok(transfer::counting(transfer::cancellable(saved, cancel.clone()), progress.clone()))
        })
    }
}

/// The layout `docker save` writes on this engine: OCI on engines 25+ and on any engine using
/// the containerd image store, the classic Docker archive otherwise.
async fn save_format(engine: &dyn DockerEngine) -> Result<ArchiveFormat, ShipError> {
    let v = engine.version().await?;
    let major: u32 = v.server_version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Ok(if v.containerd_store || major >= 25 { ArchiveFormat::OciArchive } else { ArchiveFormat::DockerArchive })
}

/// What to pull: an environment's current image, or a version.
#[derive(Debug, Clone)]
pub enum PullTarget {
    Env(EnvName),
    Version(Version),
}

#[derive(Debug, Clone)]
pub struct PullRequest {
    pub app: AppName,
    pub target: PullTarget,
    /// Keep this many newest local images of the app and remove older unused ones.
    pub keep: Option<usize>,
}

#[derive(Debug)]
pub struct PullReport {
    pub image: ImageRef,
    pub image_id: Option<String>,
    /// Why nothing was downloaded, if so.
    pub skipped: Option<String>,
    /// Compressed bytes downloaded.
    pub bytes: u64,
    pub resolved: Resolved,
    /// Local images removed by `keep`.
    pub removed: Vec<String>,
    pub seconds: f64,
    /// Set when only the layers the engine lacked were downloaded.
    pub partial: Option<crate::partial::PartialPull>,
}

/// Records the first error a stream returns, so a failed `docker load` can say why.
struct ErrorTap {
    inner: BoxReader,
    first: Arc<Mutex<Option<(std::io::ErrorKind, String)>>>,
}

impl AsyncRead for ErrorTap {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = self.inner.as_mut().poll_read(cx, buf);
        if let std::task::Poll::Ready(Err(e)) = &r {
            let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some((e.kind(), e.to_string()));
            }
        }
        r
    }
}

/// Resolves what to pull and brings it into the engine (see the module doc). `progress`
/// counts the compressed bytes downloaded; its total is set once the image is resolved.
pub async fn pull(
    engine: &dyn DockerEngine,
    registry: &Registry,
    req: &PullRequest,
    progress: &Progress,
) -> Result<PullReport, ShipError> {
    let started = Instant::now();
    let resolved = match &req.target {
        PullTarget::Env(env) => registry.resolve(&req.app, env).await,
        PullTarget::Version(v) => registry.resolve_version(&req.app, v).await,
    };
    let resolved = resolved.map_err(|e| match e.kind() {
        s3dock_core::ErrorKind::Integrity => {
            ShipError::Integrity { message: format!("{e}; nothing was loaded into Docker") }
        }
        _ => ShipError::Registry(e),
    })?;
    let record = resolved.record.clone();
    progress.set_total(record.metadata.size);
    let image = record.image.clone();
    let reference = image.to_string();
    let want_id = record.metadata.image_id.clone();

    let mut skipped = None;
    let present = engine.inspect_image(&reference).await?;
    match (&present, &want_id) {
        (Some(p), Some(want)) if &p.id == want => {
            skipped = Some(format!("the engine already has {reference} ({want})"));
        }
        _ => {
            // The same image may be present under another name (a build on this host).
            if let Some(want) = &want_id
                && let Some(found) = engine.inspect_image(want).await?
            {
                engine.tag_image(&found.id, image.app.as_str(), &image.tag.to_string()).await?;
                skipped = Some(format!("the engine already has image {want}; tagged it {reference}"));
            }
        }
    }
    let mut partial = None;
    if skipped.is_none() {
        // Never decompress more than the push recorded (or, for older metadata, more than gzip's
        // best ratio allows), so a lying archive cannot fill the disk through `docker load`.
        let limit = record.metadata.tar_size.unwrap_or_else(|| record.metadata.size.saturating_mul(1100));
        // Exactly the object the metadata committed: a re-push landing meanwhile is "replaced
        // while downloading", not a corrupt archive.
        let etag = record.metadata.archive_etag.as_ref().map(|e| s3dock_core::store::ETag(e.clone()));
        let mut loaded = false;
        if let Some(plan) = crate::partial::plan(engine, &record.metadata).await? {
            progress.set_total(plan.bytes);
            let download = s3dock_core::layers::ranged_download(
                registry.store().clone(),
                record.archive_key.clone(),
                etag.clone(),
                plan.ranges.clone(),
                progress.clone(),
            );
            match load_archive(engine, download, limit, &record).await {
                Ok(()) => {
                    loaded = true;
                    partial = Some(crate::partial::PartialPull {
                        layers_present: plan.present,
                        layers: plan.layers,
                        bytes_skipped: record.metadata.size - plan.bytes,
                    });
                }
                Err(ShipError::Engine(e)) if crate::partial::refused(&e) => {
                    tracing::warn!(image = %reference, error = %e, "the engine refused the partial archive; downloading the whole image");
                    progress.set_total(record.metadata.size + plan.bytes);
                }
                Err(e) => return Err(e),
            }
        }
        if !loaded {
            let download = transfer::verified_download(
                registry.store().clone(),
                record.archive_key.clone(),
                record.metadata.clone(),
                etag,
                progress.clone(),
            );
            load_archive(engine, download, limit, &record).await?;
        }
    }
    // Tag what is now here (loaded or found), even when it was already: a `docker load` sets no
    // tag time, and the tag time is what tells garbage collection (of another environment of
    // the same app, deploying on this host) that this image was pulled moments ago.
    if let Some(here) = engine.inspect_image(&reference).await? {
        engine.tag_image(&here.id, image.app.as_str(), &image.tag.to_string()).await?;
    }
    let removed = match req.keep {
        Some(keep) => remove_old_images(engine, &image, keep).await?,
        None => vec![],
    };
    let image_id = engine.inspect_image(&reference).await?.map(|i| i.id).or(want_id);
    Ok(PullReport {
        image,
        image_id,
        skipped,
        bytes: progress.bytes(),
        resolved,
        removed,
        seconds: started.elapsed().as_secs_f64(),
        partial,
    })
}

/// Streams a gzipped archive through gunzip (at most `limit` bytes) into `docker load`, then
/// checks the engine has the image `record` describes.
async fn load_archive(
    engine: &dyn DockerEngine,
    download: BoxReader,
    limit: u64,
    record: &s3dock_core::registry::ImageRecord,
) -> Result<(), ShipError> {
    let image = &record.image;
    let reference = image.to_string();
    let want_id = &record.metadata.image_id;
    // Tap after gunzip: it sees the download's verdict (a digest mismatch, the object
    // deleted or replaced mid-way) and gunzip's own (a bad CRC, a truncated member).
    let first_error: Arc<Mutex<Option<(std::io::ErrorKind, String)>>> = Arc::default();
    // The archive may only name the image pulled: other names in it would silently move
    // other images' tags on this host.
    let tar = Box::pin(ErrorTap {
        inner: crate::load_tags::only_tag(gzip::decompress_limited(download, limit), image),
        first: first_error.clone(),
    });
    if let Err(e) = engine.load_image(tar).await {
        let cause = first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        return Err(match cause {
            // The download verified its bytes before gunzip saw their end, so an archive
            // cut inside a gzip member is what the bucket holds: corrupt, not unavailable.
            Some((std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof, cause)) => {
                ShipError::Integrity { message: format!("{cause}; nothing was loaded into Docker") }
            }
            Some((std::io::ErrorKind::NotFound, cause)) => ShipError::Registry(s3dock_core::Error::NotFound {
                what: cause,
                hint: "nothing was loaded into Docker".into(),
            }),
            _ => e.into(),
        });
    }
    let loaded = engine.inspect_image(&reference).await?;
    match (loaded, want_id) {
        (None, _) => {
            return Err(ShipError::Integrity {
                message: format!(
                    "docker load finished but {reference} is not in the engine; the archive at {} is not an s3dock image of it — re-push it",
                    record.archive_key
                ),
            });
        }
        (Some(l), Some(want)) if &l.id != want => {
            return Err(ShipError::Integrity {
                message: format!(
                    "loaded {reference} has image id {}, but its metadata says {want}; the archive does not match its metadata — re-push {reference}",
                    l.id
                ),
            });
        }
        _ => {}
    }
    Ok(())
}

/// How long after its last pull (its tag time) an image is spared by [`remove_old_images`].
pub const PULL_GRACE: chrono::Duration = chrono::Duration::hours(1);

/// Removes local images of `current.app` beyond the `keep` newest s3dock tags, never `current`,
/// never an image a container (running or not) uses, and never one pulled (tagged) less than
/// [`PULL_GRACE`] before `current` was: another environment of the same app on this host may
/// have just pulled it, and be about to deploy it. Returns the references removed.
pub async fn remove_old_images(
    engine: &dyn DockerEngine,
    current: &ImageRef,
    keep: usize,
) -> Result<Vec<String>, ShipError> {
    let images = engine.list_images(current.app.as_str()).await?;
    let mut tagged: Vec<(ImageTag, String, String)> = Vec::new();
    for img in &images {
        for rt in &img.repo_tags {
            if let Ok(r) = ImageRef::parse(rt)
                && r.app == current.app
            {
                tagged.push((r.tag, rt.clone(), img.id.clone()));
            }
        }
    }
    tagged.sort_by(|a, b| b.0.cmp(&a.0));
    let in_use: std::collections::BTreeSet<String> =
        engine.list_containers(&ContainerFilter::default()).await?.into_iter().map(|c| c.image_id).collect();
    let current_ref = current.to_string();
    // `current` was pulled (tagged) just now; the clock is the engine's own. Another reference
    // to `current`'s own content removes no image, so only other content is spared.
    let current_info = engine.inspect_image(&current_ref).await?;
    let current_id = current_info.as_ref().map(|i| i.id.clone());
    let recent_since = current_info.and_then(|i| i.last_tagged).map(|t| t - PULL_GRACE);
    let mut removed = Vec::new();
    let mut kept = 0usize;
    for (_, reference, id) in tagged {
        if reference == current_ref {
            continue;
        }
        if kept < keep.saturating_sub(1) {
            kept += 1;
            continue;
        }
        if in_use.contains(&id) {
            tracing::info!(image = %reference, "kept: a container uses it");
            continue;
        }
        if let Some(since) = recent_since
            && current_id.as_ref() != Some(&id)
            && engine.inspect_image(&reference).await?.and_then(|i| i.last_tagged).is_some_and(|t| t >= since)
        {
            tracing::info!(image = %reference, "kept: pulled moments ago (for another environment?)");
            continue;
        }
        match engine.remove_image(&reference, false).await {
            Ok(()) => removed.push(reference),
            Err(e) => tracing::warn!(image = %reference, error = %e, "could not remove an old image"),
        }
    }
    Ok(removed)
}
