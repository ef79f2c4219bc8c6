//! Checking bytes range by range against a layer index, as they stream.

use sha2::{Digest, Sha256};

use super::index::IndexRange;

/// Hashes a stream that is exactly the concatenation of `ranges` (in the order given) and
/// checks each range's SHA-256 as soon as its last byte went through.
#[derive(Debug, Clone)]
pub struct RangeChecker {
    ranges: Vec<IndexRange>,
    /// The range being read.
    at: usize,
    /// Bytes of it read so far.
    done: u64,
    hasher: Sha256,
}

impl RangeChecker {
    pub fn new(ranges: Vec<IndexRange>) -> Self {
        RangeChecker { ranges, at: 0, done: 0, hasher: Sha256::new() }
    }

    /// Total bytes the stream must hold.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|r| r.length).sum()
    }

    /// Feeds the next bytes; an error names the first range whose bytes do not match.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            let Some(r) = self.ranges.get(self.at) else {
                return Err(format!("more bytes than the {} the layer index lists", self.total()));
            };
            let take = ((r.length - self.done) as usize).min(bytes.len());
            self.hasher.update(&bytes[..take]);
            self.done += take as u64;
            bytes = &bytes[take..];
            if self.done == r.length {
                let got = hex::encode(std::mem::take(&mut self.hasher).finalize());
                if got != r.sha256 {
                    return Err(format!(
                        "bytes {}..{} ({}) have sha256 {got}, but the layer index says {}",
                        r.offset,
                        r.offset + r.length,
                        r.diff_id.as_deref().unwrap_or("config and manifest"),
                        r.sha256
                    ));
                }
                self.at += 1;
                self.done = 0;
            }
        }
        Ok(())
    }

    /// Checks every range was read whole.
    pub fn finish(&self) -> Result<(), String> {
        if self.at == self.ranges.len() {
            Ok(())
        } else {
            Err(format!("the stream ended inside range {} of {} of the layer index", self.at + 1, self.ranges.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(offset: u64, bytes: &[u8]) -> IndexRange {
        IndexRange {
            offset,
            length: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
            tar_length: 0,
            diff_id: None,
            path: None,
        }
    }

    #[test]
    fn every_range_is_checked_wherever_the_chunks_fall() {
        let (a, b) = (b"hello layer".as_slice(), b"tail".as_slice());
        let mut c = RangeChecker::new(vec![range(0, a), range(11, b)]);
        for chunk in [&a[..3], &a[3..], &b[..1], &b[1..]] {
            c.feed(chunk).unwrap();
        }
        c.finish().unwrap();
        let mut bad = RangeChecker::new(vec![range(0, a), range(11, b)]);
        bad.feed(a).unwrap();
        assert!(bad.feed(b"tall").unwrap_err().contains("bytes 11..15"));
        let mut short = RangeChecker::new(vec![range(0, a)]);
        short.feed(&a[..4]).unwrap();
        assert!(short.finish().is_err());
        assert!(RangeChecker::new(vec![range(0, a)]).feed(b"hello layer!").is_err());
    }
}
