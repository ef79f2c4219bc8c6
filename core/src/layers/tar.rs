//! Just enough tar for the layered layout: read the headers of a `docker save` stream (ustar,
//! pax `x` path records, GNU long names) and write entries with fixed header fields.
//!
//! Written headers carry mode 0644 (0755 for directories, 0777 for links), owner 0:0, mtime 0
//! and no user or group names, so an entry's bytes depend only on its name and content: the
//! same layer gives the same bytes in every image that holds it.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use crate::store::BoxReader;

pub const BLOCK: usize = 512;

/// Bytes `size` takes in the archive, padding included.
pub fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    /// Anything else (devices, fifos): kept as it is.
    Other(u8),
}

/// One entry's header, with the pax and GNU long names already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    pub size: u64,
    pub link: String,
}

/// Reads a tar stream entry by entry.
pub struct Reader {
    inner: BoxReader,
    /// Bytes of the current entry's data (and padding) not read yet.
    left: u64,
    /// Bytes read from the stream so far.
    pub consumed: u64,
}

fn field_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn parse_octal(b: &[u8]) -> io::Result<u64> {
    if b.first().is_some_and(|c| c & 0x80 != 0) {
        // GNU base-256.
        let mut v: u64 = 0;
        for (i, &c) in b.iter().enumerate() {
            let c = if i == 0 { c & 0x7f } else { c };
            v = v.checked_mul(256).and_then(|v| v.checked_add(c as u64)).ok_or_else(|| invalid("tar size overflow"))?;
        }
        return Ok(v);
    }
    let s = field_str(b);
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).map_err(|_| invalid(format!("bad tar number {s:?}")))
}

/// The `path`/`linkpath`/`size` records of a pax header's data.
fn pax_records(data: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(sp) = rest.iter().position(|&c| c == b' ') else { break };
        let Ok(len) = std::str::from_utf8(&rest[..sp]).unwrap_or("").parse::<usize>() else { break };
        if len <= sp + 1 || len > rest.len() {
            break;
        }
        let rec = &rest[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|&c| c == b'=') {
            out.push((
                String::from_utf8_lossy(&rec[..eq]).into_owned(),
                String::from_utf8_lossy(&rec[eq + 1..]).into_owned(),
            ));
        }
        rest = &rest[len..];
    }
    out
}

impl Reader {
    pub fn new(inner: BoxReader) -> Self {
        Reader { inner, left: 0, consumed: 0 }
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid("the image archive ends inside a tar entry")
            } else {
                e
            }
        })?;
        self.consumed += buf.len() as u64;
        Ok(())
    }

    /// The next entry, `None` at the end-of-archive marker (or a clean EOF). Skips what is
    /// left of the previous entry's data.
    pub async fn next(&mut self) -> io::Result<Option<Entry>> {
        self.skip_rest().await?;
        let mut long_name: Option<String> = None;
        let mut long_link: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let mut h = [0u8; BLOCK];
            let n = self.inner.read(&mut h).await?;
            if n == 0 {
                return Ok(None);
            }
            if n < BLOCK {
                self.inner
                    .read_exact(&mut h[n..])
                    .await
                    .map_err(|_| invalid("the image archive ends inside a tar header"))?;
            }
            self.consumed += BLOCK as u64;
            if h.iter().all(|&c| c == 0) {
                // End of archive: drain the rest (the second zero block, padding).
                self.consumed += tokio::io::copy(&mut self.inner, &mut tokio::io::sink()).await?;
                return Ok(None);
            }
            let stored: u64 = h[..148].iter().chain([b' '; 8].iter()).chain(h[156..].iter()).map(|&c| c as u64).sum();
            if parse_octal(&h[148..156])? != stored {
                return Err(invalid("a tar header has a bad checksum: the image archive is damaged"));
            }
            let size = parse_octal(&h[124..136])?;
            let flag = h[156];
            match flag {
                b'x' | b'g' | b'L' | b'K' => {
                    if size > 1 << 20 {
                        return Err(invalid("a tar extended header is larger than 1 MiB"));
                    }
                    let mut data = vec![0u8; padded(size) as usize];
                    self.read_exact(&mut data).await?;
                    data.truncate(size as usize);
                    match flag {
                        b'x' => {
                            for (k, v) in pax_records(&data) {
                                match k.as_str() {
                                    "path" => long_name = Some(v),
                                    "linkpath" => long_link = Some(v),
                                    "size" => pax_size = v.parse().ok(),
                                    _ => {}
                                }
                            }
                        }
                        b'L' => long_name = Some(field_str(&data)),
                        b'K' => long_link = Some(field_str(&data)),
                        _ => {}
                    }
                    continue;
                }
                _ => {}
            }
            let mut name = field_str(&h[..100]);
            if &h[257..262] == b"ustar" {
                let prefix = field_str(&h[345..500]);
                if !prefix.is_empty() {
                    name = format!("{prefix}/{name}");
                }
            }
            let name = long_name.unwrap_or(name);
            let link = long_link.unwrap_or_else(|| field_str(&h[157..257]));
            let size = pax_size.unwrap_or(size);
            let kind = match flag {
                b'0' | 0 | b'7' => Kind::File,
                b'5' => Kind::Dir,
                b'2' => Kind::Symlink,
                b'1' => Kind::Hardlink,
                other => Kind::Other(other),
            };
            let data_size = if matches!(kind, Kind::File | Kind::Other(_)) { size } else { 0 };
            self.left = padded(data_size);
            let name = name.trim_start_matches("./").to_owned();
            return Ok(Some(Entry { name, kind, size: data_size, link }));
        }
    }

    /// Reads up to `max` bytes of the current entry's data (not its padding); empty at its end.
    pub async fn data(&mut self, remaining: u64, max: usize) -> io::Result<Bytes> {
        let want = remaining.min(max as u64) as usize;
        if want == 0 {
            return Ok(Bytes::new());
        }
        let mut buf = BytesMut::with_capacity(want);
        let mut taken = (&mut self.inner).take(want as u64);
        while buf.len() < want {
            if taken.read_buf(&mut buf).await? == 0 {
                return Err(invalid("the image archive ends inside a tar entry"));
            }
        }
        self.consumed += want as u64;
        self.left -= want as u64;
        Ok(buf.freeze())
    }

    /// Reads the current entry's data whole (for small files), at most `limit` bytes.
    pub async fn read_all(&mut self, size: u64, limit: u64) -> io::Result<Vec<u8>> {
        if size > limit {
            return Err(invalid(format!("a tar entry of {size} bytes is larger than the {limit} allowed here")));
        }
        let mut out = Vec::with_capacity(size as usize);
        while (out.len() as u64) < size {
            out.extend_from_slice(&self.data(size - out.len() as u64, 1 << 20).await?);
        }
        Ok(out)
    }

    /// Skips what is left of the current entry (data and padding) without looking at it.
    pub async fn skip_rest(&mut self) -> io::Result<()> {
        if self.left > 0 {
            let n = tokio::io::copy(&mut (&mut self.inner).take(self.left), &mut tokio::io::sink()).await?;
            self.consumed += n;
            if n != self.left {
                return Err(invalid("the image archive ends inside a tar entry"));
            }
            self.left = 0;
        }
        Ok(())
    }

    /// The padding after the current entry's data, once its data was read.
    pub fn pending_padding(&self) -> u64 {
        self.left
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}", v, width = field.len() - 1);
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

/// A header with fixed fields for `name` (pax records for names that do not fit ustar).
pub fn header(name: &str, kind: Kind, size: u64, link: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK * 3);
    let (short, prefix) = split_name(name);
    let long = short.is_none() || link.len() > 100;
    if long {
        let mut records = Vec::new();
        for (k, v) in [("path", name), ("linkpath", link)] {
            if v.is_empty() {
                continue;
            }
            let body = format!(" {k}={v}\n");
            // The length prefix counts itself.
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            records.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        out.extend(raw_header("pax", b'x', records.len() as u64, "", ""));
        out.extend_from_slice(&records);
        out.resize(out.len() + (padded(records.len() as u64) as usize - records.len()), 0);
    }
    let flag = match kind {
        Kind::File => b'0',
        Kind::Dir => b'5',
        Kind::Symlink => b'2',
        Kind::Hardlink => b'1',
        Kind::Other(f) => f,
    };
    let (n, p) = match (short, long) {
        (Some(s), false) => (s, prefix),
        _ => (truncate(name, 99), ""),
    };
    let mut h = raw_header(n, flag, size, truncate(link, 100), p);
    if matches!(kind, Kind::Dir) {
        h[100..108].copy_from_slice(b"0000755\0");
    } else if matches!(kind, Kind::Symlink | Kind::Hardlink) {
        h[100..108].copy_from_slice(b"0000777\0");
    }
    fix_checksum(&mut h);
    out.extend(h);
    out
}

/// At most `max` bytes of `s`, cut at a character boundary (the pax record holds it whole).
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `(name, prefix)` in ustar's two fields, if the name fits them.
fn split_name(name: &str) -> (Option<&str>, &str) {
    if name.len() <= 100 {
        return (Some(name), "");
    }
    for (i, c) in name.char_indices() {
        if c == '/' && i <= 155 && name.len() - i - 1 <= 100 && name.len() - i > 1 {
            return (Some(&name[i + 1..]), &name[..i]);
        }
    }
    (None, "")
}

fn raw_header(name: &str, flag: u8, size: u64, link: &str, prefix: &str) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = flag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    fix_checksum(&mut h);
    h
}

fn fix_checksum(h: &mut [u8; BLOCK]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&c| c as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// The zero padding after `size` bytes of data.
pub fn padding(size: u64) -> Bytes {
    Bytes::from(vec![0u8; (padded(size) - size) as usize])
}

/// A whole small entry: header, data, padding.
pub fn entry(name: &str, kind: Kind, data: &[u8], link: &str) -> Vec<u8> {
    let mut out = header(name, kind, data.len() as u64, link);
    out.extend_from_slice(data);
    out.extend_from_slice(&padding(data.len() as u64));
    out
}

/// The end-of-archive marker: two zero blocks.
pub fn end_marker() -> Vec<u8> {
    vec![0u8; BLOCK * 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::reader_from_bytes;

    #[tokio::test]
    async fn written_entries_read_back_with_long_names_and_links() {
        let long = format!("blobs/sha256/{}/{}", "a".repeat(64), "b".repeat(80));
        let mut tar = entry("manifest.json", Kind::File, b"[]", "");
        tar.extend(entry(&long, Kind::File, &[7u8; 1000], ""));
        tar.extend(entry("x/layer.tar", Kind::Symlink, b"", "../y/layer.tar"));
        tar.extend(end_marker());
        let mut r = Reader::new(reader_from_bytes(tar.clone()));
        let e = r.next().await.unwrap().unwrap();
        assert_eq!((e.name.as_str(), e.kind, e.size), ("manifest.json", Kind::File, 2));
        assert_eq!(r.read_all(e.size, 10).await.unwrap(), b"[]");
        let e = r.next().await.unwrap().unwrap();
        assert_eq!((e.name.clone(), e.size), (long, 1000));
        let e = r.next().await.unwrap().unwrap();
        assert_eq!((e.kind, e.link.as_str()), (Kind::Symlink, "../y/layer.tar"));
        assert!(r.next().await.unwrap().is_none());
        assert_eq!(r.consumed, tar.len() as u64);
        // Identical input, identical bytes: no time, owner or user name in a header.
        assert_eq!(header("a", Kind::File, 5, ""), header("a", Kind::File, 5, ""));
    }

    #[tokio::test]
    async fn a_damaged_header_is_refused() {
        let mut tar = entry("a", Kind::File, b"x", "");
        tar[0] = b'b';
        let e = Reader::new(reader_from_bytes(tar)).next().await.unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }
}
