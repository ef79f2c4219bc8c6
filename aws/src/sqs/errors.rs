//! From SDK failures to [`QueueError`]. The SDK error itself is taken apart by
//! [`crate::error::classify`].

use std::error::Error as StdError;

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use s3dock_core::events::EventError;

use crate::error::{Failure, ServiceFailure, classify, error_chain};

/// What went wrong talking to SQS. Each message says what to do next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("queue {queue} does not exist; create it, or fix the queue URL in the agent's registration")]
    NotFound { queue: String },
    /// `CreateQueue` of a name that exists with other values for the attributes given.
    #[error(
        "queue {queue} already exists with other attributes; change them with SetQueueAttributes, or delete the queue"
    )]
    AlreadyExists { queue: String },
    #[error("SQS refused the request on {queue} ({detail}); check the credentials and the IAM / queue policy")]
    AccessDenied { queue: String, detail: String },
    #[error("cannot reach SQS at {endpoint} ({detail}); check the endpoint, your network, and that the service runs")]
    Unreachable { endpoint: String, detail: String },
    #[error("no AWS credentials found for SQS ({detail}); set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")]
    NoCredentials { detail: String },
    #[error("{message}")]
    Invalid { message: String },
    #[error("{message}")]
    Other { message: String, retryable: bool },
}

impl QueueError {
    /// Whether the same request may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            QueueError::Unreachable { .. } => true,
            QueueError::Other { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

impl From<QueueError> for EventError {
    fn from(e: QueueError) -> Self {
        EventError { retryable: e.is_retryable(), message: e.to_string() }
    }
}

/// Error codes that mean "busy or failing right now".
const TRANSIENT_CODES: &[&str] = &[
    "RequestThrottled",
    "ThrottlingException",
    "Throttling",
    "KmsThrottled",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "RequestTimeout",
];

const NOT_FOUND_CODES: &[&str] = &["QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue", "NonExistentQueue"];

const EXISTS_CODES: &[&str] = &["QueueNameExists", "QueueAlreadyExists", "AWS.SimpleQueueService.QueueNameExists"];

const ACCESS_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "InvalidSecurity",
    "ExpiredToken",
    "KmsAccessDenied",
    "KmsDisabled",
];

/// The one mapping from SDK failures to [`QueueError`]. `doing` reads like "sending to".
pub(super) fn map_error<E>(endpoint: &str, doing: &str, queue: &str, err: SdkError<E, HttpResponse>) -> QueueError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match classify(&err) {
        Failure::NoCredentials => QueueError::NoCredentials { detail: error_chain(&err) },
        Failure::Service(s) => classify_service_error(doing, queue, s.status, s.code, s.message),
        Failure::TimedOut => {
            QueueError::Unreachable { endpoint: endpoint.to_owned(), detail: format!("{doing} {queue} timed out") }
        }
        Failure::Network => QueueError::Unreachable {
            endpoint: endpoint.to_owned(),
            detail: format!("{doing} {queue}: {}", error_chain(&err)),
        },
        Failure::Dispatch { .. } | Failure::Unreadable { .. } => QueueError::Other {
            message: format!("{doing} {queue} on {endpoint}: {}; try again later", error_chain(&err)),
            retryable: true,
        },
        Failure::Construction => QueueError::Other {
            message: format!(
                "{doing} {queue}: the request could not be built ({}); check the queue URL and the SQS settings",
                error_chain(&err)
            ),
            retryable: false,
        },
    }
}

/// An error response from SQS, by HTTP status and error code.
fn classify_service_error(
    doing: &str,
    queue: &str,
    status: u16,
    code: Option<&str>,
    message: Option<&str>,
) -> QueueError {
    let s = ServiceFailure { status, code: code.filter(|c| !c.is_empty()), message };
    let said = s.said().unwrap_or_else(|| format!("HTTP {status}"));
    let code = s.code();
    if NOT_FOUND_CODES.contains(&code) {
        return QueueError::NotFound { queue: queue.to_owned() };
    }
    if EXISTS_CODES.contains(&code) {
        return QueueError::AlreadyExists { queue: queue.to_owned() };
    }
    if status == 403 || ACCESS_CODES.contains(&code) {
        return QueueError::AccessDenied { queue: queue.to_owned(), detail: format!("{doing} {queue}: {said}") };
    }
    if status >= 500 || status == 429 || TRANSIENT_CODES.contains(&code) {
        return QueueError::Other {
            message: format!("{doing} {queue}: {said} (HTTP {status}); SQS is busy or failing, try again later"),
            retryable: true,
        };
    }
    QueueError::Other {
        message: format!("{doing} {queue} failed: {said} (HTTP {status}); check the queue URL and the request"),
        retryable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_map_to_retryable_or_permanent() {
        let c = |status, code: &str| classify_service_error("sending to", "q", status, Some(code), Some("msg"));
        assert!(matches!(c(400, "AWS.SimpleQueueService.NonExistentQueue"), QueueError::NotFound { .. }));
        assert!(matches!(c(400, "QueueDoesNotExist"), QueueError::NotFound { .. }));
        assert!(matches!(c(403, "AccessDenied"), QueueError::AccessDenied { .. }));
        assert!(matches!(c(400, "QueueAlreadyExists"), QueueError::AlreadyExists { .. }));
        assert!(matches!(c(400, "QueueNameExists"), QueueError::AlreadyExists { .. }));
        assert!(matches!(c(400, "KmsAccessDenied"), QueueError::AccessDenied { .. }));
        for (status, code) in
            [(400, "RequestThrottled"), (400, "ThrottlingException"), (500, "InternalError"), (503, ""), (429, "")]
        {
            assert!(c(status, code).is_retryable(), "{status} {code}");
        }
        for (status, code) in [(400, "InvalidMessageContents"), (400, "InvalidParameterValue"), (404, "")] {
            assert!(!c(status, code).is_retryable(), "{status} {code}");
        }
        let e: EventError = c(400, "QueueDoesNotExist").into();
        assert!(!e.retryable && e.message.contains("does not exist"), "{e:?}");
        let e: EventError = c(503, "ServiceUnavailable").into();
        assert!(e.retryable);
        assert!(QueueError::Unreachable { endpoint: "e".into(), detail: "d".into() }.is_retryable());
    }
}
