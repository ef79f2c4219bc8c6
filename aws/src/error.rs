//! The one classifier of AWS SDK failures, shared by the S3 store ([`crate::s3`]), the SQS
//! client ([`crate::sqs`]) and STS ([`crate::sts`]): missing credentials, timeouts, network
//! trouble, and service answers by HTTP status and error code. Each client then maps a
//! [`Failure`] to its own error type with messages in its own vocabulary.

use std::error::Error as StdError;
use std::future::Future;

use aws_sdk_s3::config::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::retries::ErrorKind as RetryErrorKind;

/// What an SDK failure is, whatever the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure<'a> {
    /// The credentials provider failed: the request was never sent.
    NoCredentials,
    /// The operation (or an attempt) took longer than its timeout.
    TimedOut,
    /// The connection failed (refused, reset, a connect timeout).
    Network,
    /// The request failed before it was answered for another reason (DNS, TLS...);
    /// `transient` when the SDK says a retry may help.
    Dispatch { transient: bool },
    /// An answer arrived but could not be read as the service's.
    Unreadable { status: u16 },
    /// The service answered with an error.
    Service(ServiceFailure<'a>),
    /// The request could not be built (bad input, bad settings).
    Construction,
}

/// An error answer: HTTP status, error code and message (absent in bodyless HEAD answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServiceFailure<'a> {
    pub status: u16,
    pub code: Option<&'a str>,
    pub message: Option<&'a str>,
}

impl ServiceFailure<'_> {
    /// The error code, `""` when the answer had none.
    pub fn code(&self) -> &str {
        self.code.unwrap_or("")
    }

    /// What the service said, `CODE: message`; `None` when it said nothing.
    pub fn said(&self) -> Option<String> {
        match (self.code, self.message) {
            (Some(c), Some(m)) => Some(format!("{c}: {m}")),
            (Some(c), None) => Some(c.to_owned()),
            (None, Some(m)) => Some(m.to_owned()),
            (None, None) => None,
        }
    }
}

/// Takes an SDK failure apart.
pub(crate) fn classify<E>(err: &SdkError<E, HttpResponse>) -> Failure<'_>
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    // A credentials provider failure surfaces as a dispatch failure (the request was never
    // sent), so look for it before treating dispatch failures as network trouble.
    if has_credentials_error(err) {
        return Failure::NoCredentials;
    }
    match err {
        SdkError::ServiceError(se) => Failure::Service(ServiceFailure {
            status: se.raw().status().as_u16(),
            code: se.err().code().filter(|c| !c.is_empty()),
            message: se.err().message(),
        }),
        SdkError::TimeoutError(_) => Failure::TimedOut,
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => Failure::Network,
        SdkError::DispatchFailure(d) => {
            Failure::Dispatch { transient: d.as_other() == Some(RetryErrorKind::TransientError) }
        }
        SdkError::ResponseError(re) => Failure::Unreadable { status: re.raw().status().as_u16() },
        _ => Failure::Construction,
    }
}

/// The HTTP status of the answer, if one arrived.
pub(crate) fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// The service's error code, if it answered with one.
pub(crate) fn error_code<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> Option<&str> {
    match e {
        SdkError::ServiceError(se) => se.err().code(),
        _ => None,
    }
}

/// An error and its sources, `outer: inner: innermost`, for messages (the SDK's own
/// `DisplayErrorContext` appends a `Debug` dump users should not have to read).
pub(crate) fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = e.source();
    }
    out
}

/// Whether `err`'s source chain holds the credentials provider's error type.
pub(crate) fn has_credentials_error(err: &(dyn StdError + 'static)) -> bool {
    // aws-credential-types is not a direct dependency, so its `CredentialsError` is named
    // through the output type of the provider trait the SDK re-exports. The closure is never
    // called; it only pins the type parameters.
    fn is_provider_error<F, T, E>(_: fn(&'static SharedCredentialsProvider) -> F, e: &(dyn StdError + 'static)) -> bool
    where
        F: Future<Output = Result<T, E>>,
        E: StdError + 'static,
    {
        e.is::<E>()
    }
    let mut next = Some(err);
    while let Some(e) = next {
        if is_provider_error(|p| p.provide_credentials(), e) {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::operation::put_object::PutObjectError;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(StatusCode::try_from(status).expect("valid status"), SdkBody::empty())
    }

    #[test]
    fn classifies_each_kind_of_failure() {
        let meta = ErrorMetadata::builder().code("SlowDown").message("reduce").build();
        let e = SdkError::service_error(PutObjectError::generic(meta), response(503));
        let Failure::Service(s) = classify(&e) else { panic!("a service error") };
        assert_eq!((s.status, s.code(), s.said().as_deref()), (503, "SlowDown", Some("SlowDown: reduce")));
        let e = SdkError::service_error(PutObjectError::generic(ErrorMetadata::builder().build()), response(403));
        let Failure::Service(s) = classify(&e) else { panic!("a service error") };
        assert_eq!((s.code(), s.said()), ("", None));
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e: SdkError<PutObjectError, HttpResponse> = SdkError::dispatch_failure(ConnectorError::io(refused.into()));
        assert_eq!(classify(&e), Failure::Network);
        assert!(error_chain(&e).contains("connection refused"), "{}", error_chain(&e));
        let e: SdkError<PutObjectError, HttpResponse> = SdkError::timeout_error("operation timed out");
        assert_eq!(classify(&e), Failure::TimedOut);
        let e: SdkError<PutObjectError, HttpResponse> = SdkError::construction_failure("bad input");
        assert_eq!(classify(&e), Failure::Construction);
    }
}
