//! Layered images for the simulation: `docker save`-like archives sharing a base layer, so
//! layered pushes compose new archives from ranges of earlier ones.

use s3dock_core::layers::tar::{self, Kind};
use s3dock_core::names::ImageTag;
use sha2::{Digest, Sha256};

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn layer(seed: &str, len: usize) -> Vec<u8> {
    let data: Vec<u8> = seed.bytes().cycle().take(len).collect();
    let mut t = tar::entry(&format!("f-{}", seed.len()), Kind::File, &data, "");
    t.extend(tar::end_marker());
    t
}

/// The archive of `tag`'s image with top layer `top` over the shared base, and its image id.
pub fn archive(tag: &ImageTag, top: u8) -> (Vec<u8>, String) {
    let base = layer("the shared base layer ", 24_000);
    let top_layer = layer(&format!("top {top} of {tag} "), 3_000);
    let layers = [("b".repeat(64), base), (format!("{:064x}", top as u64 + 1), top_layer)];
    let diff_ids: Vec<String> = layers.iter().map(|(_, l)| format!("sha256:{}", sha(l))).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "os": "linux", "config": {"Labels": {"tag": tag.to_string()}}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("json");
    let id = sha(&config);
    let mut out = Vec::new();
    for (v1, l) in &layers {
        out.extend(tar::entry(&format!("{v1}/layer.tar"), Kind::File, l, ""));
    }
    out.extend(tar::entry(&format!("{id}.json"), Kind::File, &config, ""));
    let paths: Vec<String> = layers.iter().map(|(v1, _)| format!("{v1}/layer.tar")).collect();
    let manifest = serde_json::json!([{"Config": format!("{id}.json"), "RepoTags": [], "Layers": paths}]);
    out.extend(tar::entry("manifest.json", Kind::File, &serde_json::to_vec(&manifest).expect("json"), ""));
    out.extend(tar::end_marker());
    (out, format!("sha256:{id}"))
}
