//! The layer index of an image's metadata: where each layer's compressed bytes are in the
//! archive object, and the digest of every byte range, so a reader can fetch only some layers
//! and still check every byte it loads.

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

/// Per-range digests of an archive in the layered layout (see `docs/bucket-layout.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerIndex {
    /// The image's layers in order (the config's `rootfs.diff_ids`, `sha256:...`): what a pull
    /// compares with the layer chains the engine already has.
    #[serde(default)]
    pub diff_ids: Vec<String>,
    /// Every byte of the object, as consecutive ranges in object order. Each range is whole
    /// gzip members and whole tar entries: a layer entry, or the tail (config, manifest,
    /// end-of-archive marker), which is always last.
    pub ranges: Vec<IndexRange>,
    /// Some ranges were copied from earlier objects: the pusher never saw their compressed
    /// bytes in order, so the metadata's `checksum` is empty and `sha256` absent; readers check
    /// the ranges instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub composed: bool,
}

/// One range of an indexed archive.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRange {
    pub offset: u64,
    pub length: u64,
    /// SHA-256 of the range's compressed bytes, hex, computed when they were first produced.
    pub sha256: String,
    /// Uncompressed bytes of the range (tar headers and padding included).
    pub tar_length: u64,
    /// The layer it holds (`sha256:...`); absent for the tail.
    #[serde(default)]
    pub diff_id: Option<String>,
    /// The tar entry it holds (what the manifest names); absent for the tail.
    #[serde(default)]
    pub path: Option<String>,
}

/// The most ranges an index may list.
pub const MAX_RANGES: usize = 2048;

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

impl LayerIndex {
    /// Checks the index describes an object of `size` bytes completely and sanely.
    pub fn validate(&self, size: u64) -> Result<(), String> {
        if self.ranges.is_empty() || self.ranges.len() > MAX_RANGES {
            return Err(format!("layers.ranges must list 1 to {MAX_RANGES} ranges"));
        }
        if self.diff_ids.len() > MAX_RANGES {
            return Err(format!("layers.diff_ids lists more than {MAX_RANGES} layers"));
        }
        for d in &self.diff_ids {
            if !d.strip_prefix("sha256:").is_some_and(is_digest) {
                return Err(format!(
                    "layers.diff_ids holds {:?}, not sha256: and 64 hex digits",
                    d.chars().take(80).collect::<String>()
                ));
            }
        }
        let mut at = 0u64;
        for r in &self.ranges {
            if r.offset != at || r.length == 0 {
                return Err(format!(
                    "layers.ranges do not cover the archive in order (a range at {} where {at} was expected)",
                    r.offset
                ));
            }
            if !is_digest(&r.sha256) {
                return Err("layers.ranges holds a sha256 that is not 64 hex digits".into());
            }
            if let Some(d) = &r.diff_id
                && !self.diff_ids.contains(d)
            {
                return Err(format!("layers.ranges names layer {d}, which diff_ids does not list"));
            }
            if r.path.as_ref().is_some_and(|p| p.len() > 512 || p.chars().any(char::is_control)) {
                return Err("layers.ranges holds a path longer than 512 bytes or with control characters".into());
            }
            at = at.checked_add(r.length).ok_or("layers.ranges overflow")?;
        }
        if at != size {
            return Err(format!("layers.ranges cover {at} bytes of a {size}-byte archive"));
        }
        Ok(())
    }

    /// The uncompressed size of the whole archive.
    pub fn tar_size(&self) -> u64 {
        self.ranges.iter().map(|r| r.tar_length).sum()
    }

    /// The ranges a host needs when it already has the first `have` layers of the image
    /// (layers past a missing one are missing too: docker keys layers by their whole chain).
    /// `None` when a needed layer has no range of its own (it sits in the tail, or the index
    /// does not know it): then only a full download is sure to work.
    pub fn ranges_for(&self, have: usize) -> Option<Vec<IndexRange>> {
        let have = &self.diff_ids[..have.min(self.diff_ids.len())];
        let missing = &self.diff_ids[have.len()..];
        let mut out = Vec::new();
        for r in &self.ranges {
            match &r.diff_id {
                Some(d) if have.contains(d) && !missing.contains(d) => {}
                _ => out.push(r.clone()),
            }
        }
        for d in missing {
            if !self.ranges.iter().any(|r| r.diff_id.as_ref() == Some(d)) {
                return None;
            }
        }
        Some(out)
    }
}

/// How many of `diff_ids`' leading layers some image in `images` (each a list of diff ids)
/// also starts with: the layer chains an engine holding those images has.
pub fn chain_prefix(diff_ids: &[String], images: &[Vec<String>]) -> usize {
    images.iter().map(|img| img.iter().zip(diff_ids).take_while(|(a, b)| a == b).count()).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn range(offset: u64, length: u64, diff: Option<char>) -> IndexRange {
        IndexRange {
            offset,
            length,
            sha256: "0".repeat(64),
            tar_length: length * 2,
            diff_id: diff.map(d),
            path: diff.map(|c| format!("{c}/layer.tar")),
        }
    }

    #[test]
    fn an_index_must_cover_the_archive_exactly() {
        let ok = LayerIndex {
            diff_ids: vec![d('a'), d('b')],
            ranges: vec![range(0, 10, Some('b')), range(10, 5, Some('a')), range(15, 3, None)],
            composed: false,
        };
        ok.validate(18).unwrap();
        assert!(ok.validate(19).unwrap_err().contains("cover 18 bytes"));
        let mut gap = ok.clone();
        gap.ranges[1].offset = 11;
        assert!(gap.validate(18).unwrap_err().contains("in order"));
        let mut stranger = ok.clone();
        stranger.ranges[0].diff_id = Some(d('c'));
        assert!(stranger.validate(18).unwrap_err().contains("does not list"));
        assert_eq!(ok.tar_size(), 36);
    }

    #[test]
    fn a_host_fetches_the_layers_past_its_longest_chain_and_the_tail() {
        let idx = LayerIndex {
            diff_ids: vec![d('a'), d('b')],
            ranges: vec![range(0, 10, Some('b')), range(10, 5, Some('a')), range(15, 3, None)],
            composed: false,
        };
        assert_eq!(chain_prefix(&idx.diff_ids, &[vec![d('a'), d('c')], vec![d('b')]]), 1);
        let need = idx.ranges_for(1).unwrap();
        assert_eq!(need.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 15]);
        assert_eq!(idx.ranges_for(0).unwrap().len(), 3);
        // The same layer twice: held once, needed if any of its positions is missing.
        let twice = LayerIndex { diff_ids: vec![d('a'), d('b'), d('a')], ..idx.clone() };
        assert_eq!(twice.ranges_for(2).unwrap().len(), 2);
        // A missing layer without a range of its own: only a full download will do.
        let small = LayerIndex { ranges: vec![range(0, 10, Some('a')), range(10, 8, None)], ..idx };
        assert!(small.ranges_for(1).is_none());
    }
}
