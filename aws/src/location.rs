//! Where a bucket is: the one parser of store locations the CLI (`--store`, profiles), the
//! agent's host file and the functions share, and the one place a location becomes an open
//! [`ObjectStore`].
//!
//! Accepted: `s3://BUCKET[/PREFIX]`, `file:///ABSOLUTE/PATH` (also `file://localhost/...`, with
//! `%XX` escapes), or a plain directory path, relative to a base directory (the CLI's working
//! directory, the host file's own directory), `~/` to the home directory where one is given.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use s3dock_core::store::{LocalStore, ObjectStore, StoreError};

use crate::{S3Config, S3Store};

const HINT: &str = "use s3://BUCKET[/PREFIX], file:///ABSOLUTE/PATH or a directory path";

/// A store location. S3 connection settings (region, endpoint, profile...) are applied to the
/// [`S3Config`] by the caller after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory laid out like the bucket.
    Local(PathBuf),
    /// An S3 bucket (and prefix).
    S3(S3Config),
}

/// What a relative path is taken against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Base<'a> {
    /// Relative paths are joined to this directory (left relative without one).
    pub dir: Option<&'a Path>,
    /// `~/` is expanded to this directory (left as written without one).
    pub home: Option<&'a Path>,
}

impl Location {
    /// Parses a location; the error is one line saying what to write instead.
    pub fn parse<'a>(raw: &str, base: impl Into<Base<'a>>) -> Result<Location, String> {
        if raw.trim().is_empty() {
            return Err(format!("the store is empty; {HINT}"));
        }
        if raw.chars().any(char::is_control) {
            return Err(format!("the store {raw:?} contains control characters; {HINT}"));
        }
        if raw.starts_with("s3://") {
            return S3Config::from_url(raw).map(Location::S3).map_err(|e| e.to_string());
        }
        if let Some(rest) = raw.strip_prefix("file://") {
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(format!(
                    "the store URL {raw:?} is not an absolute file URL; write file:///ABSOLUTE/PATH (three slashes) or a plain path"
                ));
            }
            let decoded =
                percent_decode(path).ok_or_else(|| format!("the store URL {raw:?} has a bad %-escape; {HINT}"))?;
            return Ok(Location::Local(PathBuf::from(decoded)));
        }
        if let Some((scheme, _)) = raw.split_once("://") {
            return Err(format!("unsupported store URL scheme {scheme:?} in {raw:?}; {HINT}"));
        }
        Ok(Location::Local(base.into().absolute(Path::new(raw))))
    }

    /// The URL shown to people (and written by `s3dock config init`); [`Location::parse`]
    /// reads it back.
    pub fn url(&self) -> String {
        match self {
            Location::Local(p) => format!("file://{}", p.display()),
            Location::S3(c) => c.url(),
        }
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, Location::S3(_))
    }

    /// The store at this location: a local directory (created on first use) or an S3 bucket.
    /// No request is sent: an unreachable endpoint or refused credentials surface on the first
    /// operation.
    pub async fn open(&self) -> Result<Arc<dyn ObjectStore>, StoreError> {
        Ok(match self {
            Location::Local(path) => Arc::new(LocalStore::open(path)?),
            Location::S3(cfg) => {
                let store = S3Store::connect(cfg.clone()).await?;
                tracing::debug!(store = %cfg.url(), endpoint = %store.endpoint(), "S3 store ready");
                Arc::new(store)
            }
        })
    }
}

impl Base<'_> {
    /// A relative path taken against the base directory; `~/` against the home directory.
    pub fn absolute(&self, p: &Path) -> PathBuf {
        if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), self.home) {
            return home.join(rest);
        }
        match self.dir {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }
}

/// `%XX` escapes of a file URL path; `None` for a malformed escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Base<'static> {
        Base { dir: Some(Path::new("/etc/s3dock")), home: Some(Path::new("/home/me")) }
    }

    /// The cases the CLI and the agent's host file used to read differently: the agent took
    /// `file://localhost/...` for a relative URL, kept `%20` escapes literally, and called an
    /// empty store "not a store" without saying it was empty.
    #[test]
    fn file_urls_read_the_same_everywhere() {
        let local = |s: &str| Location::parse(s, base()).unwrap();
        assert_eq!(local("file:///srv/images"), Location::Local("/srv/images".into()));
        assert_eq!(local("file://localhost/srv/images"), Location::Local("/srv/images".into()));
        assert_eq!(local("file:///srv/my%20images"), Location::Local("/srv/my images".into()));
        assert_eq!(local("relative/store"), Location::Local("/etc/s3dock/relative/store".into()));
        assert_eq!(local("~/images"), Location::Local("/home/me/images".into()));
        assert_eq!(local("/abs"), Location::Local("/abs".into()));
        assert_eq!(Location::parse("store", Base::default()).unwrap(), Location::Local("store".into()));
        assert_eq!(local("/srv/images").url(), "file:///srv/images");
        assert_eq!(Location::parse(&local("/srv/my images").url(), base()).unwrap(), local("/srv/my images"));
        let s3 = local("s3://acme-images/team");
        assert!(s3.is_s3() && !local("/x").is_s3());
        assert_eq!(s3.url(), "s3://acme-images/team");
    }

    #[test]
    fn bad_locations_say_what_to_write() {
        for (bad, why) in [
            ("", "empty"),
            ("  ", "empty"),
            ("file://relative/x", "absolute"),
            ("file:///a%zz", "%-escape"),
            ("http://x/y", "unsupported"),
            ("ftp://x", "scheme \"ftp\""),
            ("s3://B", "bucket"),
            ("/a\nb", "control"),
        ] {
            let err = Location::parse(bad, base()).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "{bad:?}: one line: {err}");
        }
    }

    #[tokio::test]
    async fn opens_a_local_directory() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::Local(dir.path().join("bucket"));
        let store = loc.open().await.unwrap();
        assert!(store.url().starts_with("file://"), "{}", store.url());
        assert!(dir.path().join("bucket").is_dir());
    }
}
