//! The only name a pulled archive may give: the reference s3dock pulled.
//!
//! `docker load` applies every name an archive carries: each `RepoTags` entry of its
//! `manifest.json`, the names in `repositories`, the name annotations of an OCI `index.json`.
//! An archive carrying other names (pushed from a host where the image had several tags, or
//! made that way) would silently move tags of other images on the host — `nginx:latest`,
//! another app's — the moment it is pulled. [`only_tag`] rewrites those three files as the
//! archive streams through, so a load can give exactly one name: the expected one. Everything
//! else (layers, configs) passes through unchanged, without being held in memory; only the
//! three small JSON files are (at most 4 MiB each).
//!
//! Tar entries are 512-byte headers followed by their data padded to 512 bytes. A pax extended
//! header (`x`) or a GNU long name (`L`) may carry the real name of the entry that follows, so
//! those are held back until that entry is known: a `manifest.json` hidden behind a pax path is
//! rewritten all the same. An archive with more than one image in its manifest is refused.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use s3dock_core::names::ImageRef;
use s3dock_core::store::BoxReader;
use serde_json::Value;
use tokio::io::{AsyncRead, ReadBuf};

const BLOCK: usize = 512;
/// The most a rewritten JSON file (or a held-back pax header) may hold.
const MAX_HELD: u64 = 4 << 20;

/// Wraps the tar stream of a `docker save` archive so that loading it can only name the image
/// `expected` (see the module doc). A file it cannot rewrite fails the read with
/// `InvalidData`, which aborts the load.
pub fn only_tag(inner: BoxReader, expected: &ImageRef) -> BoxReader {
    Box::pin(OnlyTag {
        inner,
        expected: expected.clone(),
        input: Vec::new(),
        out: VecDeque::new(),
        state: State::Header,
        held: Vec::new(),
        held_name: None,
        inner_done: false,
    })
}

enum State {
    /// The next 512 bytes are a header (or the end-of-archive marker).
    Header,
    /// The data of a pax or GNU long-name header, held back with it.
    Meta { kind: u8, size: u64, remaining: u64, data: Vec<u8> },
    /// A file to rewrite, read whole.
    Capture { name: &'static str, size: u64, remaining: u64, data: Vec<u8> },
    /// A file passed through as it is.
    Pass { remaining: u64 },
    /// After the end-of-archive marker: everything passes.
    Trailer,
}

struct OnlyTag {
    inner: BoxReader,
    expected: ImageRef,
    /// Read from `inner`, not processed yet.
    input: Vec<u8>,
    /// Processed, not handed to the reader yet.
    out: VecDeque<u8>,
    state: State,
    /// Pax / long-name headers (and their data) waiting for the entry they describe.
    held: Vec<u8>,
    held_name: Option<String>,
    inner_done: bool,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// A tar numeric field: octal text, or base-256 when its first byte has the high bit set.
fn number(field: &[u8]) -> io::Result<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(u64::from(*b)))
                .ok_or_else(|| invalid("a tar size overflows".into()))?;
        }
        return Ok(n);
    }
    let text: String = field.iter().take_while(|b| **b != 0).map(|b| *b as char).collect();
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| invalid(format!("a tar header has the size {text:?}")))
}

fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(&field[..field.iter().position(|b| *b == 0).unwrap_or(field.len())]).into_owned()
}

/// The entry's name from its ustar header (prefix and name).
fn header_name(h: &[u8]) -> String {
    let name = text(&h[0..100]);
    let prefix = if &h[257..262] == b"ustar" { text(&h[345..500]) } else { String::new() };
    if prefix.is_empty() { name } else { format!("{prefix}/{name}") }
}

/// The files that name images, by their (effective) entry name.
fn naming_file(name: &str) -> Option<&'static str> {
    match name.trim_start_matches("./") {
        "manifest.json" => Some("manifest.json"),
        "repositories" => Some("repositories"),
        "index.json" => Some("index.json"),
        _ => None,
    }
}

/// A fresh ustar header for a regular file.
fn file_header(name: &str, size: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

impl OnlyTag {
    /// `manifest.json`, `repositories` or `index.json`, naming only `self.expected`.
    fn rewrite(&self, name: &str, data: &[u8]) -> io::Result<Vec<u8>> {
        let what = |e: serde_json::Error| invalid(format!("the archive's {name} is not JSON ({e})"));
        let mut doc: Value = serde_json::from_slice(data).map_err(what)?;
        let expected = self.expected.to_string();
        match name {
            "manifest.json" => {
                let images =
                    doc.as_array_mut().ok_or_else(|| invalid("the archive's manifest.json is not a list".into()))?;
                if images.len() != 1 {
                    return Err(invalid(format!(
                        "the archive holds {} images; an s3dock image archive holds exactly one (re-push {expected})",
                        images.len()
                    )));
                }
                let dropped: Vec<String> = images[0]["RepoTags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str())
                    .filter(|t| *t != expected)
                    .map(str::to_owned)
                    .collect();
                if !dropped.is_empty() {
                    tracing::warn!(image = %expected, ?dropped, "the archive names other images too; loading it as {expected} only");
                }
                images[0]["RepoTags"] = Value::from(vec![expected.clone()]);
            }
            "repositories" => {
                let id = doc
                    .get(self.expected.app.as_str())
                    .and_then(|tags| tags.get(self.expected.tag.to_string()))
                    .cloned();
                let mut only = serde_json::Map::new();
                if let Some(id) = id {
                    only.insert(
                        self.expected.app.to_string(),
                        serde_json::json!({ self.expected.tag.to_string(): id }),
                    );
                }
                doc = Value::Object(only);
            }
            _ => {
                let full = format!("docker.io/library/{expected}");
                let tag = self.expected.tag.to_string();
                for manifest in doc["manifests"].as_array_mut().into_iter().flatten() {
                    if let Some(annotations) = manifest.get_mut("annotations").and_then(Value::as_object_mut) {
                        annotations.retain(|key, value| {
                            let value = value.as_str().unwrap_or_default();
                            match key.as_str() {
                                "io.containerd.image.name" => value == expected || value == full,
                                "org.opencontainers.image.ref.name" => value == tag || value == expected,
                                _ => true,
                            }
                        });
                    }
                }
            }
        }
        serde_json::to_vec(&doc).map_err(|e| invalid(e.to_string()))
    }

    /// Turns what `input` holds into output, as far as it goes. `Ok(false)`: more input needed.
    fn step(&mut self) -> io::Result<bool> {
        match &mut self.state {
            State::Trailer => {
                let all = std::mem::take(&mut self.input);
                self.out.extend(all);
                Ok(false)
            }
            State::Pass { remaining } => {
                let n = (*remaining).min(self.input.len() as u64) as usize;
                self.out.extend(self.input.drain(..n));
                *remaining -= n as u64;
                if *remaining == 0 {
                    self.state = State::Header;
                    return Ok(true);
                }
                Ok(false)
            }
            State::Meta { remaining, data, size, kind } => {
                let n = (*remaining).min(self.input.len() as u64) as usize;
                let chunk: Vec<u8> = self.input.drain(..n).collect();
                self.held.extend_from_slice(&chunk);
                data.extend_from_slice(&chunk);
                *remaining -= n as u64;
                if *remaining > 0 {
                    return Ok(false);
                }
                let body = &data[..(*size as usize).min(data.len())];
                let name = match kind {
                    b'L' => Some(text(body)),
                    b'x' => String::from_utf8_lossy(body).lines().find_map(|record| {
                        let (_, kv) = record.split_once(' ')?;
                        kv.strip_prefix("path=").map(str::to_owned)
                    }),
                    _ => None,
                };
                if name.is_some() {
                    self.held_name = name;
                }
                self.state = State::Header;
                Ok(true)
            }
            State::Capture { name, size, remaining, data } => {
                let n = (*remaining).min(self.input.len() as u64) as usize;
                data.extend(self.input.drain(..n));
                *remaining -= n as u64;
                if *remaining > 0 {
                    return Ok(false);
                }
                let (name, size) = (*name, *size as usize);
                let body = std::mem::take(data);
                let rewritten = self.rewrite(name, &body[..size.min(body.len())])?;
                self.out.extend(file_header(name, rewritten.len() as u64));
                let pad = padded(rewritten.len() as u64) as usize - rewritten.len();
                self.out.extend(rewritten);
                self.out.extend(std::iter::repeat_n(0u8, pad));
                self.state = State::Header;
                Ok(true)
            }
            State::Header => {
                if self.input.len() < BLOCK {
                    return Ok(false);
                }
                let header: Vec<u8> = self.input.drain(..BLOCK).collect();
                if header.iter().all(|b| *b == 0) {
                    self.out.extend(std::mem::take(&mut self.held));
                    self.out.extend(header);
                    self.state = State::Trailer;
                    return Ok(true);
                }
                let size = number(&header[124..136])?;
                let kind = header[156];
                if matches!(kind, b'x' | b'g' | b'L' | b'K') {
                    if self.held.len() as u64 + padded(size) > MAX_HELD {
                        return Err(invalid("the archive has a tar extended header too large to be s3dock's".into()));
                    }
                    self.held.extend_from_slice(&header);
                    self.state = State::Meta { kind, size, remaining: padded(size), data: Vec::new() };
                    return Ok(true);
                }
                let name = self.held_name.take().unwrap_or_else(|| header_name(&header));
                match naming_file(&name).filter(|_| matches!(kind, b'0' | 0)) {
                    Some(file) => {
                        if size > MAX_HELD {
                            return Err(invalid(format!(
                                "the archive's {file} is {size} bytes, too large to be s3dock's"
                            )));
                        }
                        // A fresh header replaces the held ones: the entry is written anew.
                        self.held.clear();
                        self.state = State::Capture { name: file, size, remaining: padded(size), data: Vec::new() };
                    }
                    None => {
                        self.out.extend(std::mem::take(&mut self.held));
                        self.out.extend(header);
                        self.state = State::Pass { remaining: padded(size) };
                    }
                }
                Ok(true)
            }
        }
    }
}

impl AsyncRead for OnlyTag {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = buf.remaining().min(this.out.len());
                let (a, b) = this.out.as_slices();
                let from_a = n.min(a.len());
                buf.put_slice(&a[..from_a]);
                buf.put_slice(&b[..n - from_a]);
                this.out.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.step()? {
                continue;
            }
            if !this.out.is_empty() {
                continue;
            }
            if this.inner_done {
                return Poll::Ready(if this.input.is_empty() && matches!(this.state, State::Header | State::Trailer) {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the image archive ends in the middle of an entry",
                    ))
                });
            }
            let mut chunk = [0u8; 64 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match this.inner.as_mut().poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        this.inner_done = true;
                    } else {
                        this.input.extend_from_slice(read.filled());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use s3dock_core::store::{read_to_vec, reader_from_bytes};

    use super::*;

    fn image() -> ImageRef {
        ImageRef::parse("web:20250721-2118-f7a5a27").unwrap()
    }

    fn tar_of(entries: &[(&str, &[u8])], pax_name: Option<&str>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            if let (Some(real), true) = (pax_name, *name == "hidden") {
                b.append_pax_extensions([("path", real.as_bytes())]).unwrap();
            }
            b.append_data(&mut h, name, *body).unwrap();
        }
        b.into_inner().unwrap()
    }

    async fn filter(archive: Vec<u8>) -> io::Result<Vec<u8>> {
        read_to_vec(only_tag(reader_from_bytes(bytes::Bytes::from(archive)), &image())).await
    }

    fn entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut a = tar::Archive::new(archive);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut body = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut body).unwrap();
                (name, body)
            })
            .collect()
    }

    /// An archive naming other images moved their tags when loaded.
    #[tokio::test]
    async fn a_pulled_archive_can_only_name_the_pulled_image() {
        let layer = vec![7u8; 70_000];
        let manifest = br#"[{"Config":"abc.json","RepoTags":["web:20250721-2118-f7a5a27","nginx:latest","other:1"],"Layers":["l/layer.tar"]}]"#;
        let repositories = br#"{"web":{"20250721-2118-f7a5a27":"abc"},"nginx":{"latest":"abc"}}"#;
        let index = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:1","annotations":{"io.containerd.image.name":"docker.io/library/nginx:latest","org.opencontainers.image.ref.name":"latest","x":"kept"}},{"digest":"sha256:2","annotations":{"io.containerd.image.name":"docker.io/library/web:20250721-2118-f7a5a27","org.opencontainers.image.ref.name":"20250721-2118-f7a5a27"}}]}"#;
        let archive = tar_of(
            &[
                ("l/layer.tar", &layer),
                ("abc.json", b"{}"),
                ("index.json", index),
                ("manifest.json", manifest),
                ("repositories", repositories),
            ],
            None,
        );
        let out = entries(&filter(archive).await.unwrap());
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["l/layer.tar", "abc.json", "index.json", "manifest.json", "repositories"]);
        assert_eq!(out[0].1, layer, "layers pass through unchanged");
        let m: Value = serde_json::from_slice(&out[3].1).unwrap();
        assert_eq!(m[0]["RepoTags"], serde_json::json!(["web:20250721-2118-f7a5a27"]));
        assert_eq!(m[0]["Layers"], serde_json::json!(["l/layer.tar"]));
        let r: Value = serde_json::from_slice(&out[4].1).unwrap();
        assert_eq!(r, serde_json::json!({"web": {"20250721-2118-f7a5a27": "abc"}}));
        let i: Value = serde_json::from_slice(&out[2].1).unwrap();
        assert_eq!(i["manifests"][0]["annotations"], serde_json::json!({"x": "kept"}));
        assert_eq!(
            i["manifests"][1]["annotations"]["io.containerd.image.name"],
            "docker.io/library/web:20250721-2118-f7a5a27"
        );
    }

    #[tokio::test]
    async fn a_manifest_hidden_behind_a_pax_name_is_rewritten_too() {
        let manifest = br#"[{"Config":"abc.json","RepoTags":["nginx:latest"],"Layers":[]}]"#;
        let archive = tar_of(&[("abc.json", b"{}"), ("hidden", manifest)], Some("manifest.json"));
        let out = entries(&filter(archive).await.unwrap());
        let (name, body) = out.iter().find(|(n, _)| n == "manifest.json").expect("the manifest, named as it was");
        let m: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(m[0]["RepoTags"], serde_json::json!(["web:20250721-2118-f7a5a27"]), "{name}");
    }

    #[tokio::test]
    async fn archives_that_are_not_one_image_are_refused() {
        let two = br#"[{"Config":"a.json","RepoTags":[]},{"Config":"b.json","RepoTags":[]}]"#;
        let e = filter(tar_of(&[("manifest.json", two)], None)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("holds 2 images"), "{e}");
        let e = filter(tar_of(&[("manifest.json", b"not json")], None)).await.unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
        // Cut in the middle of an entry: the load must not see a clean end.
        let mut cut = tar_of(&[("l/layer.tar", &[1u8; 5000])], None);
        cut.truncate(2000);
        assert_eq!(filter(cut).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap(), 256);
    }
}
