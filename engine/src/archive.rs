//! The two shapes of a `docker save` archive, told apart from entry names.
//!
//! - **Docker archive** (engines before 25 with the classic image store, e.g. Docker 20.10):
//!   one `<64-hex>/` directory per layer (`layer.tar`, `json`, `VERSION`), the image config as
//!   `<64-hex>.json`, then `manifest.json` and `repositories`.
//! - **OCI archive** (every engine 25+, and engines with the containerd image store): an OCI
//!   image layout (`blobs/sha256/<hex>`, `index.json`, `oci-layout`) plus a `manifest.json` and
//!   `repositories` kept for older `docker load`s.
//!
//! `manifest.json` and `repositories` are in both, so they decide nothing alone. Engines write
//! entries in lexical order, so the first entry already decides: `blobs/` for an OCI archive, a
//! `<64-hex>/` layer directory or `<64-hex>.json` config for a Docker archive. That makes
//! [`sniff_archive_format`] usable on the first few kilobytes of a stream.

use strum::{Display, EnumIter, EnumString, IntoStaticStr};

/// The layout of a `docker save` archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, Display, EnumString, EnumIter)]
#[strum(serialize_all = "kebab-case")]
pub enum ArchiveFormat {
    /// The classic layout: `manifest.json`, `<id>.json`, one directory per layer.
    DockerArchive,
    /// The OCI image layout: `index.json`, `oci-layout`, `blobs/sha256/...` (plus a
    /// `manifest.json` for compatibility).
    OciArchive,
}

impl ArchiveFormat {
    pub fn as_str(&self) -> &'static str {
        self.into()
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What one entry name says about the format, if anything.
fn classify(name: &str) -> Option<ArchiveFormat> {
    let name = name.trim_start_matches("./");
    let (first, rest) = match name.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    };
    match (first, rest) {
        ("oci-layout" | "index.json", None) | ("blobs", _) => Some(ArchiveFormat::OciArchive),
        (dir, Some(_)) if is_hex64(dir) => Some(ArchiveFormat::DockerArchive),
        (file, None) if file.strip_suffix(".json").is_some_and(is_hex64) => Some(ArchiveFormat::DockerArchive),
        _ => None,
    }
}

/// The format of an archive from the names of its entries (in archive order), or `None` when
/// they do not decide it.
///
/// An OCI marker (`oci-layout`, `index.json`, `blobs/...`) anywhere makes it an OCI archive. A
/// classic marker (`<64-hex>/...`, `<64-hex>.json`) makes it a Docker archive. A listing with
/// neither but with a `manifest.json` is a Docker archive; since an OCI archive lists `blobs/`
/// and `index.json` before `manifest.json`, that also holds for a prefix that reaches
/// `manifest.json`.
pub fn archive_format_of<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<ArchiveFormat> {
    let mut saw_manifest = false;
    let mut classic = false;
    for name in names {
        match classify(name) {
            Some(ArchiveFormat::OciArchive) => return Some(ArchiveFormat::OciArchive),
            Some(ArchiveFormat::DockerArchive) => classic = true,
            None => saw_manifest |= name.trim_start_matches("./") == "manifest.json",
        }
    }
    (classic || saw_manifest).then_some(ArchiveFormat::DockerArchive)
}

/// The entry names found in a tar prefix, stopping quietly where the prefix ends.
pub fn tar_entry_names(prefix: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(prefix);
    let Ok(entries) = archive.entries() else { return names };
    for entry in entries {
        let Ok(mut entry) = entry else { break };
        names.push(String::from_utf8_lossy(&entry.path_bytes()).into_owned());
        // Consume the body so the next header is read; a truncated body ends the listing.
        if std::io::copy(&mut entry, &mut std::io::sink()).is_err() {
            break;
        }
    }
    names
}

/// The format of a `docker save` stream from its first bytes (a few KiB is enough: the first
/// entry decides, see the module documentation). `None` if the prefix does not decide it.
pub fn sniff_archive_format(prefix: &[u8]) -> Option<ArchiveFormat> {
    let names = tar_entry_names(prefix);
    archive_format_of(names.iter().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `as_str`, `Display` and `FromStr` (strum) name each format by the same word.
    #[test]
    fn archive_format_words() {
        use strum::IntoEnumIterator;
        let words: Vec<&str> = ArchiveFormat::iter().map(|f| f.as_str()).collect();
        assert_eq!(words, ["docker-archive", "oci-archive"]);
        for f in ArchiveFormat::iter() {
            assert_eq!(f.to_string(), f.as_str());
            assert_eq!(f.as_str().parse::<ArchiveFormat>(), Ok(f));
        }
    }

    const CONFIG: &str = "0f4c1ee1b2f8b3e1ca4ba1f4d6cc6f5f8a0d0c7f0a6b5f2bfa3e7c2a41b8e3d1";
    const LAYER: &str = "7c3f6a0e4b1d2c9a8e5f3b2d1c0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a";

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_ustar();
            if name.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, name, &[][..]).unwrap();
            } else {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, name, *data).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    /// The shape Docker 20.10 writes.
    fn docker_archive() -> Vec<u8> {
        tar_of(&[
            (&format!("{LAYER}/"), b""),
            (&format!("{LAYER}/VERSION"), b"1.0"),
            (&format!("{LAYER}/json"), b"{}"),
            (&format!("{LAYER}/layer.tar"), &[0u8; 3000]),
            (&format!("{CONFIG}.json"), b"{\"architecture\":\"amd64\"}"),
            ("manifest.json", b"[{\"Config\":\"x.json\",\"RepoTags\":[\"app:1\"],\"Layers\":[]}]"),
            ("repositories", b"{}"),
        ])
    }

    /// The shape engines 25+ write.
    fn oci_archive() -> Vec<u8> {
        tar_of(&[
            ("blobs/", b""),
            ("blobs/sha256/", b""),
            (&format!("blobs/sha256/{LAYER}"), &[0u8; 3000]),
            (&format!("blobs/sha256/{CONFIG}"), b"{}"),
            ("index.json", b"{\"schemaVersion\":2}"),
            ("manifest.json", b"[]"),
            ("oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}"),
            ("repositories", b"{}"),
        ])
    }

    #[test]
    fn whole_archives_are_recognised() {
        assert_eq!(sniff_archive_format(&docker_archive()), Some(ArchiveFormat::DockerArchive));
        assert_eq!(sniff_archive_format(&oci_archive()), Some(ArchiveFormat::OciArchive));
    }

    #[test]
    fn a_prefix_with_the_first_header_is_enough() {
        // 512 bytes: the first header and nothing else.
        assert_eq!(sniff_archive_format(&docker_archive()[..512]), Some(ArchiveFormat::DockerArchive));
        assert_eq!(sniff_archive_format(&oci_archive()[..512]), Some(ArchiveFormat::OciArchive));
        // A prefix cut inside a layer body still keeps the names read so far.
        let d = docker_archive();
        let names = tar_entry_names(&d[..2048]);
        assert_eq!(names[0], format!("{LAYER}/"));
        assert!(names.len() < 7, "{names:?}");
    }

    #[test]
    fn undecided_inputs_say_so() {
        assert_eq!(sniff_archive_format(&[]), None);
        assert_eq!(sniff_archive_format(b"definitely not a tar archive, just some text that is long enough"), None);
        assert_eq!(sniff_archive_format(&tar_of(&[("hello.txt", b"hi")])), None);
        assert_eq!(archive_format_of(["repositories"]), None);
    }

    #[test]
    fn names_alone() {
        assert_eq!(archive_format_of(["manifest.json", "repositories"]), Some(ArchiveFormat::DockerArchive));
        assert_eq!(archive_format_of(["./oci-layout"]), Some(ArchiveFormat::OciArchive));
        assert_eq!(archive_format_of(["manifest.json", "index.json"]), Some(ArchiveFormat::OciArchive));
        assert_eq!(archive_format_of([format!("{CONFIG}.json").as_str()]), Some(ArchiveFormat::DockerArchive));
        // Not 64 hex digits: no decision.
        assert_eq!(archive_format_of(["abc/layer.tar", "ABC.json"]), None);
        assert_eq!(ArchiveFormat::OciArchive.to_string(), "oci-archive");
    }
}
