//! The engine API version s3dock speaks: negotiated once per connection, then pinned on
//! every request (see the module doc of [`crate::docker`]).

use std::fmt;
use std::sync::OnceLock;

use bollard::BollardRequest;

use super::EngineError;

/// The oldest engine API accepted: `platform` on `/build` arrived in 1.32.
const MIN_API: ApiVersion = ApiVersion { major: 1, minor: 32 };

/// A Docker engine API version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

impl ApiVersion {
    /// Parses `1.41`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let (major, minor) = s.trim().split_once('.')?;
        Some(ApiVersion { major: major.parse().ok()?, minor: minor.parse().ok()? })
    }

    /// The newest API bollard's models describe.
    pub fn bollard() -> Self {
        let v = bollard::API_DEFAULT_VERSION;
        ApiVersion { major: v.major_version as u32, minor: v.minor_version as u32 }
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Picks the API version to speak: the newest both sides know.
pub fn negotiate_api(server_max: ApiVersion, server_min: Option<ApiVersion>) -> Result<ApiVersion, EngineError> {
    let chosen = server_max.min(ApiVersion::bollard());
    if chosen < MIN_API {
        return Err(EngineError::Protocol {
            message: format!(
                "the engine speaks API {server_max}, older than the {MIN_API} s3dock needs; upgrade Docker"
            ),
        });
    }
    if let Some(min) = server_min
        && min > chosen
    {
        return Err(EngineError::Protocol {
            message: format!(
                "the engine only accepts API {min} and newer, s3dock speaks up to {chosen}; upgrade s3dock"
            ),
        });
    }
    Ok(chosen)
}

/// `/v1.41/...` style paths; everything else (`/volumes`, `/version`) is not versioned.
fn is_versioned_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v") else { return false };
    let end = rest.find('/').unwrap_or(rest.len());
    ApiVersion::parse(&rest[..end]).is_some()
}

/// `uri` with its path prefixed by `/v{version}`, keeping scheme, authority and query.
fn versioned_uri(uri: &http::Uri, version: ApiVersion) -> Option<http::Uri> {
    let pq = uri.path_and_query()?;
    if is_versioned_path(pq.path()) {
        return None;
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(format!("/v{version}{pq}").parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

pub(super) fn pin_api_version(mut req: BollardRequest, version: &OnceLock<ApiVersion>) -> BollardRequest {
    if let Some(v) = version.get()
        && let Some(uri) = versioned_uri(req.uri(), *v)
    {
        *req.uri_mut() = uri;
    }
    req
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn api_versions_parse_and_order() {
        assert_eq!(ApiVersion::parse("1.41"), Some(ApiVersion { major: 1, minor: 41 }));
        assert_eq!(ApiVersion::parse(" 1.9 "), Some(ApiVersion { major: 1, minor: 9 }));
        assert!(ApiVersion::parse("1.41.2").is_none());
        assert!(ApiVersion::parse("latest").is_none());
        assert!(ApiVersion::parse("1.9").unwrap() < ApiVersion::parse("1.41").unwrap());
        assert_eq!(ApiVersion { major: 1, minor: 41 }.to_string(), "1.41");
    }

    #[test]
    fn negotiation_picks_the_newest_common_version() {
        let v = |s| ApiVersion::parse(s).unwrap();
        // Docker 20.10: the engine is older than bollard.
        assert_eq!(negotiate_api(v("1.41"), Some(v("1.12"))).unwrap(), v("1.41"));
        // An engine newer than bollard: speak bollard's version.
        let newer = ApiVersion { major: 1, minor: ApiVersion::bollard().minor + 5 };
        assert_eq!(negotiate_api(newer, Some(v("1.24"))).unwrap(), ApiVersion::bollard());
        // Too old for s3dock.
        let err = negotiate_api(v("1.30"), None).unwrap_err();
        assert!(err.to_string().contains("upgrade Docker"), "{err}");
        // An engine that refuses everything bollard speaks.
        let floor = ApiVersion { major: 1, minor: ApiVersion::bollard().minor + 1 };
        let err = negotiate_api(ApiVersion { major: 1, minor: floor.minor + 3 }, Some(floor)).unwrap_err();
        assert!(err.to_string().contains("upgrade s3dock"), "{err}");
    }

    #[test]
    fn requests_are_pinned_to_the_negotiated_version() {
        let v = ApiVersion { major: 1, minor: 41 };
        let uri: http::Uri = "unix://2f7661722f72756e/images/app:1/json?x=1".parse().unwrap();
        assert_eq!(versioned_uri(&uri, v).unwrap().to_string(), "unix://2f7661722f72756e/v1.41/images/app:1/json?x=1");
        let uri: http::Uri = "http://127.0.0.1:2375/volumes".parse().unwrap();
        assert_eq!(versioned_uri(&uri, v).unwrap().to_string(), "http://127.0.0.1:2375/v1.41/volumes");
        let already: http::Uri = "http://127.0.0.1:2375/v1.40/version".parse().unwrap();
        assert!(versioned_uri(&already, v).is_none());

        let pinned = OnceLock::new();
        let req = |p: &str| http::Request::builder().uri(p).body(bollard::body_full(Bytes::new())).unwrap();
        // Before negotiation nothing is rewritten: the first GET /version goes out unversioned.
        assert_eq!(pin_api_version(req("http://h/version"), &pinned).uri().path(), "/version");
        pinned.set(v).unwrap();
        assert_eq!(pin_api_version(req("http://h/containers/json"), &pinned).uri().path(), "/v1.41/containers/json");
    }
}
