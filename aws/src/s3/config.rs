//! Where a bucket is and how to reach it: [`S3Config`], its URL form and its validation.

use std::time::Duration;

use s3dock_core::names::ObjectKey;
use s3dock_core::store::StoreError;

const MIB: usize = 1024 * 1024;
const GIB: u64 = 1024 * 1024 * 1024;

/// S3's smallest allowed part (all parts but the last).
pub const MIN_PART_SIZE: usize = 5 * MIB;
/// S3's largest allowed part.
pub const MAX_PART_SIZE: usize = 5 * 1024 * MIB;
/// S3's limit on the number of parts of one multipart upload.
pub const MAX_PARTS: u64 = 10_000;
/// The largest object CopyObject accepts; larger ones are copied part by part.
pub const MAX_SINGLE_COPY: u64 = 5 * GIB;

/// Where and how to reach an S3 bucket. Holds no secrets: credentials always come from the AWS
/// chain (environment, profile, IMDS...), and [`S3Config::validate`] refuses an endpoint URL
/// with embedded credentials, so the derived `Debug` is safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket: `""` or `"a/b/"` (no leading slash, one trailing slash).
    pub prefix: String,
    /// `None`: the AWS chain's region (`AWS_REGION`, the profile...), else [`DEFAULT_REGION`].
    pub region: Option<String>,
    /// A custom endpoint (`http://127.0.0.1:4566`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most emulators need.
    pub path_style: bool,
    /// An AWS profile to take credentials and region from instead of the default chain.
    pub aws_profile: Option<String>,
    /// Multipart part size in bytes, at least [`MIN_PART_SIZE`]. Bodies smaller than one part go
    /// up in a single PutObject. A size hint above `part_size` x 10,000 raises it for that upload
    /// (S3 allows at most 10,000 parts).
    pub part_size: usize,
    /// Parts uploaded (or copied) at the same time.
    pub concurrency: usize,
    /// Attempts per request, the first included (the SDK's standard retry policy).
    pub max_attempts: u32,
    /// Time allowed to open a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed for one HTTP request to be sent and its response headers to arrive. It covers
    /// sending a whole part, so it must exceed `part_size` / the slowest expected uplink. Stalled
    /// body streams (either direction) are caught separately by the SDK's stalled-stream
    /// protection, so a multi-GB download is not bounded by this.
    pub read_timeout: Duration,
    /// Time allowed for one operation, retries included (not the streaming of a GET body).
    pub operation_timeout: Duration,
    /// Keys per ListObjectsV2 page (1-1000); `None` for the server's default (1000). Tests lower
    /// it to exercise pagination with few keys.
    pub list_page_size: Option<i32>,
    /// Objects larger than this are copied with UploadPartCopy instead of CopyObject. S3 refuses
    /// CopyObject above [`MAX_SINGLE_COPY`], the default; tests lower it to exercise the path.
    pub multipart_copy_threshold: u64,
}

impl S3Config {
    /// A configuration for `bucket` with the defaults (no prefix, AWS endpoint, 16 MiB parts,
    /// 4 in flight, 4 attempts, 3 s connect timeout).
    pub fn new(bucket: &str) -> Result<Self, StoreError> {
        validate_bucket(bucket)?;
        Ok(S3Config {
            bucket: bucket.to_owned(),
            prefix: String::new(),
            region: None,
            endpoint: None,
            path_style: false,
            aws_profile: None,
            part_size: 16 * MIB,
            concurrency: 4,
            max_attempts: 4,
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(300),
            operation_timeout: Duration::from_secs(30 * 60),
            list_page_size: None,
            multipart_copy_threshold: MAX_SINGLE_COPY,
        })
    }

    /// Parses `s3://bucket[/prefix]` (a trailing `/` is optional).
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| {
            config_error(format!(
                "invalid S3 store URL {url:?}: {reason}; use s3://BUCKET[/PREFIX], e.g. s3://my-images or s3://my-images/team-a"
            ))
        };
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("it does not start with s3://"))?;
        if rest.contains(['?', '#']) {
            return Err(bad("it has a query or fragment"));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket name is missing"));
        }
        S3Config::new(bucket)?.with_prefix(prefix)
    }

    /// Sets the key prefix, normalized to `""` or `"a/b/"`.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self, StoreError> {
        self.prefix = normalize_prefix(prefix)?;
        Ok(self)
    }

    /// The store's URL, `s3://bucket` or `s3://bucket/prefix`; [`S3Config::from_url`] parses it
    /// back to the same bucket and prefix.
    pub fn url(&self) -> String {
        match self.prefix.strip_suffix('/') {
            Some(p) if !p.is_empty() => format!("s3://{}/{p}", self.bucket),
            _ => format!("s3://{}", self.bucket),
        }
    }

    /// Checks every field (they are public, so a caller may have set anything) and returns the
    /// configuration with its prefix normalized.
    pub fn validate(&self) -> Result<S3Config, StoreError> {
        validate_bucket(&self.bucket)?;
        let mut cfg = self.clone();
        cfg.prefix = normalize_prefix(&self.prefix)?;
        if let Some(ep) = &cfg.endpoint {
            validate_endpoint(ep)?;
        }
        if let Some(r) = &cfg.region
            && (r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(config_error(format!("invalid S3 region {r:?}; use a region name such as us-east-1")));
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&cfg.part_size) {
            return Err(config_error(format!(
                "part size {} bytes is outside S3's limits; use between 5 MiB ({MIN_PART_SIZE}) and 5 GiB",
                cfg.part_size
            )));
        }
        if !(1..=64).contains(&cfg.concurrency) {
            return Err(config_error(format!(
                "concurrency {} is out of range; use 1 to 64 parts in flight",
                cfg.concurrency
            )));
        }
        if cfg.max_attempts == 0 {
            return Err(config_error("max_attempts must be at least 1 (the first attempt counts)".into()));
        }
        if let Some(n) = cfg.list_page_size
            && !(1..=1000).contains(&n)
        {
            return Err(config_error(format!("list page size {n} is out of range; use 1 to 1000")));
        }
        if !(MIN_PART_SIZE as u64..=MAX_SINGLE_COPY).contains(&cfg.multipart_copy_threshold) {
            return Err(config_error(format!(
                "multipart copy threshold {} is out of range; use 5 MiB to 5 GiB",
                cfg.multipart_copy_threshold
            )));
        }
        if cfg.connect_timeout.is_zero() || cfg.read_timeout.is_zero() || cfg.operation_timeout.is_zero() {
            return Err(config_error("S3 timeouts must be greater than zero".into()));
        }
        Ok(cfg)
    }
}

pub(super) fn config_error(message: String) -> StoreError {
    StoreError::Other { message, retryable: false }
}

/// S3's bucket naming rules (general purpose buckets).
pub(super) fn validate_bucket(name: &str) -> Result<(), StoreError> {
    let bad = |reason: String| {
        Err(config_error(format!(
            "invalid S3 bucket name {name:?}: {reason}; bucket names are 3-63 characters of lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
        )))
    };
    if name.len() < 3 || name.len() > 63 {
        return bad(format!("it is {} characters long", name.chars().count()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'))) {
        return bad(format!("it contains {c:?}"));
    }
    let first = name.as_bytes()[0];
    let last = name.as_bytes()[name.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return bad("it must start and end with a letter or digit".into());
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return bad("it has '.' next to '.' or '-'".into());
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return bad("it is formatted as an IP address".into());
    }
    Ok(())
}

/// `""`, `"/"` -> `""`; `"a/b"`, `"/a/b/"` -> `"a/b/"`. Every segment must be a valid key
/// segment, so prefix + key is always a valid key.
pub(super) fn normalize_prefix(prefix: &str) -> Result<String, StoreError> {
    let trimmed = prefix.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    ObjectKey::parse(trimmed).map_err(|e| {
        config_error(format!("invalid S3 key prefix {prefix:?}: {e}; use folder names joined by '/', e.g. team-a/prod"))
    })?;
    Ok(format!("{trimmed}/"))
}

pub(super) fn validate_endpoint(ep: &str) -> Result<(), StoreError> {
    let bad = |reason: &str| {
        Err(config_error(format!(
            "invalid S3 endpoint {:?}: {reason}; use http(s)://HOST[:PORT], e.g. http://127.0.0.1:4566",
            redact_userinfo(ep)
        )))
    };
    let rest = match ep.strip_prefix("https://").or_else(|| ep.strip_prefix("http://")) {
        Some(r) => r,
        None => return bad("it does not start with http:// or https://"),
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return bad("the host is missing");
    }
    if authority.contains('@') {
        return bad("it embeds credentials; put them in the environment or an AWS profile instead");
    }
    if ep.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains whitespace");
    }
    Ok(())
}

/// An endpoint for messages with any `user:password@` removed.
pub(super) fn redact_userinfo(ep: &str) -> String {
    match ep.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map(|(a, p)| (a, Some(p))).unwrap_or((rest, None));
            let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
            match path {
                Some(p) => format!("{scheme}://{host}/{p}"),
                None => format!("{scheme}://{host}"),
            }
        }
        None => ep.rsplit_once('@').map(|(_, h)| h.to_owned()).unwrap_or_else(|| ep.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_urls() {
        let c = S3Config::from_url("s3://my-images").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("my-images", ""));
        assert_eq!(c.url(), "s3://my-images");
        let c = S3Config::from_url("s3://my.images-2/team-a/prod/").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("my.images-2", "team-a/prod/"));
        assert_eq!(c.url(), "s3://my.images-2/team-a/prod");
        assert_eq!(S3Config::from_url(&c.url()).unwrap(), c);
        assert_eq!(S3Config::from_url("s3://abc/").unwrap().prefix, "");
    }

    #[test]
    fn has_sensible_defaults() {
        let c = S3Config::new("abc").unwrap();
        assert_eq!(c.part_size, 16 * MIB);
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.max_attempts, 4);
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.multipart_copy_threshold, MAX_SINGLE_COPY);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn refuses_bad_urls_with_a_hint() {
        for (url, needle) in [
            ("https://bucket/x", "does not start with s3://"),
            ("s3://", "bucket name is missing"),
            ("s3:///prefix", "bucket name is missing"),
            ("s3://bucket?versionId=1", "query"),
            ("s3://Bucket", "'B'"),
            ("s3://ab", "2 characters"),
            (&format!("s3://{}", "a".repeat(64)), "64 characters"),
            ("s3://-bucket", "start and end"),
            ("s3://bucket-", "start and end"),
            ("s3://my..bucket", "'.' next to"),
            ("s3://my_bucket", "'_'"),
            ("s3://192.168.1.10", "IP address"),
            ("s3://bucket/a//b", "empty path segment"),
            ("s3://bucket/a/../b", "\"..\""),
        ] {
            let err = S3Config::from_url(url).expect_err(url).to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(
                err.contains("bucket names are") || err.contains("s3://BUCKET") || err.contains("use folder names"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn normalizes_prefixes() {
        for (raw, want) in [("", ""), ("/", ""), ("a", "a/"), ("/a/b/", "a/b/"), ("a/b", "a/b/"), ("x y+z", "x y+z/")] {
            assert_eq!(normalize_prefix(raw).unwrap(), want, "{raw:?}");
        }
        let c = S3Config { prefix: "/team/".into(), ..S3Config::new("abc").unwrap() };
        assert_eq!(c.validate().unwrap().prefix, "team/");
        assert_eq!(c.validate().unwrap().url(), "s3://abc/team");
    }

    #[test]
    fn validates_limits_and_endpoints() {
        let base = S3Config::new("abc").unwrap();
        let bad = [
            S3Config { part_size: MIN_PART_SIZE - 1, ..base.clone() },
            S3Config { concurrency: 0, ..base.clone() },
            S3Config { max_attempts: 0, ..base.clone() },
            S3Config { list_page_size: Some(0), ..base.clone() },
            S3Config { multipart_copy_threshold: MAX_SINGLE_COPY + 1, ..base.clone() },
            S3Config { endpoint: Some("127.0.0.1:4566".into()), ..base.clone() },
            S3Config { region: Some("us east".into()), ..base.clone() },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let secret = S3Config { endpoint: Some("http://AKIA:hunter2@minio.local:9000".into()), ..base.clone() };
        let err = secret.validate().unwrap_err().to_string();
        assert!(err.contains("embeds credentials") && !err.contains("hunter2") && !err.contains("AKIA"), "{err}");
        let ok = S3Config { endpoint: Some("http://127.0.0.1:4566".into()), list_page_size: Some(5), ..base };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn redacts_userinfo() {
        assert_eq!(redact_userinfo("http://u:p@h:1/x"), "http://h:1/x");
        assert_eq!(redact_userinfo("http://h:1"), "http://h:1");
    }
}
