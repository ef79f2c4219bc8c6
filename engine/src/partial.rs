//! Partial pulls: a host that already has some of an image's layers downloads only the ranges
//! of the archive it lacks, plus the tail (config and manifest), and `docker load`s that.
//!
//! `docker load` (moby `image/tarexport/load.go`) untars the archive, reads `manifest.json`,
//! and for each layer looks up the layer chain up to it: a chain the engine has is never
//! opened. So an archive holding the manifest, the config and only the layers past the
//! longest chain the engine already has loads to the same image. Engines that do not work
//! that way (the containerd image store of Docker 25+ may not) refuse it: the pull then falls
//! back to the whole archive. Every byte fetched is checked against the layer index.

use s3dock_core::docs::ImageMetadata;
use s3dock_core::layers::{IndexRange, chain_prefix};
use serde::Serialize;

use crate::docker::{DockerEngine, EngineError};

/// What a partial pull fetches.
#[derive(Debug, Clone)]
pub struct PartialPlan {
    pub ranges: Vec<IndexRange>,
    /// Compressed bytes to download.
    pub bytes: u64,
    /// Leading layers of the image the engine already has.
    pub present: usize,
    pub layers: usize,
}

/// What a partial pull did, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartialPull {
    /// Layers the engine already had (not downloaded).
    pub layers_present: usize,
    pub layers: usize,
    /// Compressed bytes not downloaded.
    pub bytes_skipped: u64,
}

/// Download less than this share of the archive, or the whole archive: a partial archive
/// saves little below it and costs a ranged request per run of layers.
pub const PAYS_BELOW: f64 = 0.8;

/// The ranges to fetch when the engine already has some of the image's layers; `None` when a
/// whole download is the way: no index, an engine with the containerd image store, no layer
/// present, or too little to save.
pub async fn plan(engine: &dyn DockerEngine, meta: &ImageMetadata) -> Result<Option<PartialPlan>, EngineError> {
    let Some(index) = meta.layers.as_ref().filter(|i| !i.diff_ids.is_empty()) else { return Ok(None) };
    if engine.version().await?.containerd_store {
        return Ok(None);
    }
    let present = chain_prefix(&index.diff_ids, &engine.image_layers().await?);
    if present == 0 {
        return Ok(None);
    }
    let Some(ranges) = index.ranges_for(present) else { return Ok(None) };
    let bytes: u64 = ranges.iter().map(|r| r.length).sum();
    if bytes as f64 >= meta.size as f64 * PAYS_BELOW {
        return Ok(None);
    }
    Ok(Some(PartialPlan { ranges, bytes, present, layers: index.diff_ids.len() }))
}

/// Whether a failed load of a partial archive is the engine refusing it because a layer file
/// it wanted is not in the archive, so that the whole archive should be loaded instead. Docker
/// 20.10's classic store says `open /var/lib/docker/tmp/docker-import-…/{id}/layer.tar: no such
/// file or directory`; the containerd image store names the blob it did not find. Any other
/// failure (a full disk, a broken engine) is the pull's error, not a reason to download
/// everything again.
pub fn refused(e: &EngineError) -> bool {
    let EngineError::Load { message } = e else { return false };
    let m = message.to_ascii_lowercase();
    ["no such file or directory", "not found", "does not exist", "missing"].iter().any(|s| m.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(message: &str) -> EngineError {
        EngineError::Load { message: message.into() }
    }

    #[test]
    fn only_a_missing_layer_is_a_refusal() {
        // What Docker 20.10 (API 1.41) answers for a manifest naming a layer file the archive lacks.
        assert!(refused(&load(
            "open /var/lib/docker/tmp/docker-import-3535922505/abc/layer.tar: no such file or directory"
        )));
        assert!(refused(&load("failed to import: content digest sha256:1234: not found")));
        assert!(!refused(&load("write /var/lib/docker/tmp/x: no space left on device")));
        assert!(!refused(&load("archive/tar: invalid tar header")));
        assert!(!refused(&EngineError::Daemon { status: 500, message: "layer not found".into() }));
    }
}
