//! From SDK failures to [`StoreError`]: what each failure is for a store, and what the message
//! tells the user to do. The SDK error itself is taken apart by [`crate::error::classify`].

use std::error::Error as StdError;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use s3dock_core::names::ObjectKey;
use s3dock_core::store::StoreError;

use crate::error::{Failure, ServiceFailure, classify, error_chain};

/// What an error message needs to know about the store.
#[derive(Debug, Clone)]
pub(super) struct ErrCtx {
    pub(super) url: String,
    pub(super) bucket: String,
    pub(super) endpoint: String,
}

/// Error codes S3 uses for refused credentials or permissions.
const ACCESS_CODES: &[&str] = &[
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidSecurity",
];

/// Error codes that mean "busy or failing right now": worth a later retry.
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
];

impl ErrCtx {
    /// The one mapping from SDK failures to [`StoreError`]. `doing` reads like "writing" or
    /// "listing", `key` is the store-relative key (or prefix) the request was about.
    pub(super) fn map<E>(&self, doing: &str, key: &str, err: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        match classify(&err) {
            Failure::NoCredentials => StoreError::NoCredentials { detail: error_chain(&err) },
            Failure::Service(s) => self.map_service(doing, key, s),
            Failure::TimedOut => {
                StoreError::Unreachable { endpoint: self.endpoint.clone(), detail: format!("{doing} {key} timed out") }
            }
            Failure::Network => StoreError::Unreachable {
                endpoint: self.endpoint.clone(),
                detail: format!("{doing} {key}: {}", error_chain(&err)),
            },
            Failure::Dispatch { transient } => StoreError::Other {
                message: format!(
                    "{doing} {key} on {} failed before the request was answered: {}; check the endpoint and region settings",
                    self.url,
                    error_chain(&err)
                ),
                retryable: transient,
            },
            Failure::Unreadable { .. } => StoreError::Other {
                message: format!(
                    "{doing} {key} on {}: the response could not be read ({}); try again, and check that {} is an S3 endpoint",
                    self.url,
                    error_chain(&err),
                    self.endpoint
                ),
                retryable: true,
            },
            Failure::Construction => StoreError::Other {
                message: format!(
                    "{doing} {key} on {}: the request could not be built ({}); check the store settings (bucket, prefix, region, endpoint)",
                    self.url,
                    error_chain(&err)
                ),
                retryable: false,
            },
        }
    }

    /// An error response from the service, by HTTP status and S3 error code (HEAD responses
    /// carry no body, so their code is absent or generic).
    fn map_service(&self, doing: &str, key: &str, s: ServiceFailure<'_>) -> StoreError {
        let (status, code_s) = (s.status, s.code());
        let said = s.said().unwrap_or_else(|| format!("HTTP {status}"));
        if code_s == "NoSuchBucket" {
            return StoreError::NoSuchBucket { bucket: self.bucket.clone() };
        }
        if status == 412 || code_s == "PreconditionFailed" || code_s == "ConditionalRequestConflict" {
            // 409 ConditionalRequestConflict: a concurrent conditional write to the same key
            // won; for the caller that is exactly a lost compare-and-swap.
            return StoreError::PreconditionFailed { key: key.to_owned() };
        }
        if code_s == "NoSuchUpload" {
            return StoreError::Other {
                message: format!(
                    "{doing} {key} on {}: the multipart upload was aborted meanwhile (by a lifecycle rule or another process); start the upload again",
                    self.url
                ),
                retryable: true,
            };
        }
        if status == 404 {
            return StoreError::NotFound { key: key.to_owned() };
        }
        if status == 403 || ACCESS_CODES.contains(&code_s) {
            return StoreError::AccessDenied { store: self.url.clone(), detail: format!("{doing} {key}: {said}") };
        }
        if status == 301
            || matches!(
                code_s,
                "PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException"
            )
        {
            return StoreError::Other {
                message: format!(
                    "{doing} {key} on {}: {said}; the bucket is probably in another region: set the store's region to the bucket's",
                    self.url
                ),
                retryable: false,
            };
        }
        if status >= 500 || status == 429 || TRANSIENT_CODES.contains(&code_s) {
            return StoreError::Other {
                message: format!(
                    "{doing} {key} on {}: {said} (HTTP {status}); S3 is busy or failing, try again later",
                    self.url
                ),
                retryable: true,
            };
        }
        StoreError::Other {
            message: format!(
                "{doing} {key} on {} failed: {said} (HTTP {status}); check the request and that {} supports it",
                self.url, self.endpoint
            ),
            retryable: false,
        }
    }

    /// The service answered but not as S3 does.
    pub(super) fn protocol(&self, what: &str, key: &ObjectKey) -> StoreError {
        StoreError::Other {
            message: format!(
                "{key} on {}: {what}; check that {} is an S3-compatible endpoint",
                self.url, self.endpoint
            ),
            retryable: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::Client;
    use aws_sdk_s3::config::{BehaviorVersion, Region};
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::operation::put_object::PutObjectError;
    use aws_sdk_s3::types::error::NoSuchKey;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;
    use aws_smithy_types::retry::RetryConfig;

    use super::*;

    fn ctx() -> ErrCtx {
        ErrCtx { url: "s3://b-1/p".into(), bucket: "b-1".into(), endpoint: "http://127.0.0.1:4566".into() }
    }

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(StatusCode::try_from(status).expect("valid status"), SdkBody::empty())
    }

    fn put_error(status: u16, code: &str, message: &str) -> SdkError<PutObjectError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(PutObjectError::generic(meta), response(status))
    }

    #[test]
    fn maps_service_errors() {
        let c = ctx();
        let map = |status, code, msg| c.map("writing", "k/x", put_error(status, code, msg));
        assert!(
            matches!(map(412, "PreconditionFailed", "At least one..."), StoreError::PreconditionFailed { key } if key == "k/x")
        );
        assert!(map(409, "ConditionalRequestConflict", "conflict").is_precondition_failed());
        assert!(matches!(map(404, "NoSuchKey", "gone"), StoreError::NotFound { key } if key == "k/x"));
        assert!(matches!(map(404, "NoSuchBucket", "nope"), StoreError::NoSuchBucket { bucket } if bucket == "b-1"));
        for code in ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"] {
            let e = map(403, code, "denied");
            assert!(matches!(&e, StoreError::AccessDenied { detail, .. } if detail.contains(code)), "{e:?}");
            assert!(e.to_string().contains("AWS_PROFILE"), "{e}");
        }
        let e = map(503, "SlowDown", "reduce your request rate");
        assert!(e.is_retryable() && e.to_string().contains("try again later"), "{e}");
        assert!(map(500, "InternalError", "oops").is_retryable());
        let e = map(400, "InvalidArgument", "bad header");
        assert!(!e.is_retryable(), "{e:?}");
        let s = e.to_string();
        assert!(s.contains("InvalidArgument") && s.contains("bad header") && s.contains("HTTP 400"), "{s}");
        assert!(map(301, "PermanentRedirect", "wrong region").to_string().contains("set the store's region"));
        let e = map(404, "NoSuchUpload", "aborted");
        assert!(matches!(e, StoreError::Other { retryable: true, .. }), "{e:?}");
    }

    #[test]
    fn maps_modeled_and_bodyless_errors() {
        let c = ctx();
        let e = SdkError::service_error(GetObjectError::NoSuchKey(NoSuchKey::builder().build()), response(404));
        assert!(c.map("reading", "a/b", e).is_not_found());
        // A HEAD 403/412 has no body, so no code: the status decides.
        let e = SdkError::service_error(PutObjectError::generic(ErrorMetadata::builder().build()), response(403));
        assert!(matches!(c.map("reading", "a/b", e), StoreError::AccessDenied { .. }));
        let e = SdkError::service_error(PutObjectError::generic(ErrorMetadata::builder().build()), response(412));
        assert!(c.map("writing", "a/b", e).is_precondition_failed());
    }

    #[test]
    fn maps_connection_failures_to_unreachable() {
        let c = ctx();
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e: SdkError<PutObjectError, HttpResponse> = SdkError::dispatch_failure(ConnectorError::io(refused.into()));
        let mapped = c.map("writing", "a", e);
        assert!(matches!(&mapped, StoreError::Unreachable { endpoint, .. } if endpoint == "http://127.0.0.1:4566"));
        assert!(mapped.is_retryable());
        let e: SdkError<PutObjectError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::timeout("connect timed out".into()));
        assert!(matches!(c.map("writing", "a", e), StoreError::Unreachable { .. }));
        let e: SdkError<PutObjectError, HttpResponse> = SdkError::timeout_error("operation timed out");
        assert!(matches!(c.map("writing", "a", e), StoreError::Unreachable { .. }));
        let e: SdkError<PutObjectError, HttpResponse> = SdkError::construction_failure("bad input");
        assert!(matches!(c.map("writing", "a", e), StoreError::Other { retryable: false, .. }));
    }

    /// A real client whose credentials provider fails (a profile that does not exist in an
    /// empty profile file): the failure must map to `NoCredentials`, not `Unreachable`.
    #[tokio::test]
    // The non-deprecated names of the profile-file types live in aws-runtime, which is not a
    // direct dependency.
    #[allow(deprecated)]
    async fn maps_missing_credentials() {
        use aws_config::profile::ProfileFileCredentialsProvider;
        use aws_config::profile::profile_file::{ProfileFileKind, ProfileFiles};
        let files = ProfileFiles::builder()
            .include_default_config_file(false)
            .include_default_credentials_file(false)
            .with_contents(ProfileFileKind::Config, "[default]\nregion = us-east-1\n")
            .build();
        let provider = ProfileFileCredentialsProvider::builder()
            .profile_files(files)
            .profile_name("s3dock-no-such-profile")
            .build();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:1")
            .credentials_provider(provider)
            .retry_config(RetryConfig::disabled())
            .build();
        let client = Client::from_conf(conf);
        let err = client.head_object().bucket("b-1").key("k").send().await.expect_err("no credentials");
        let mapped = ctx().map("reading", "k", err);
        assert!(matches!(mapped, StoreError::NoCredentials { .. }), "{mapped:?}");
        assert!(mapped.to_string().contains("AWS_PROFILE"), "{mapped}");
    }
}
