//! The error of registry operations and event handlers. Variants exist for what callers
//! branch on; every message is one line that says what to do next.

use crate::docs::DocError;
use crate::names::NameError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Name(#[from] NameError),
    /// Something the command needs is not in the bucket.
    #[error("{what}; {hint}")]
    NotFound { what: String, hint: String },
    /// The request contradicts what the bucket holds (an immutable tag, a concurrent change).
    #[error("{message}")]
    Conflict { message: String },
    /// A document in the bucket is unreadable or inconsistent.
    #[error(transparent)]
    Document(#[from] DocError),
    /// Bytes or references in the bucket are not what they claim (checksums, cycles, a
    /// pointer into another app).
    #[error("{message}")]
    Integrity { message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operation is refused as unsafe or invalid as asked.
    #[error("{message}")]
    Refused { message: String },
    /// An argument is not what the operation takes.
    #[error("{message}")]
    Usage { message: String },
}

/// The classes of failure, which map to the CLI's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad names or arguments.
    Usage,
    NotFound,
    Conflict,
    Integrity,
    /// The store (or another service) cannot be reached or refused us.
    Unavailable,
    Internal,
    /// The user stopped it (Ctrl-C, SIGTERM) before anything was committed.
    Interrupted,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Name(_) | Error::Usage { .. } => ErrorKind::Usage,
            Error::Refused { .. } => ErrorKind::Conflict,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::Document(_) | Error::Integrity { .. } => ErrorKind::Integrity,
            Error::Store(e) => {
                match e {
                    StoreError::NotFound { .. } => ErrorKind::NotFound,
                    StoreError::PreconditionFailed { .. } => ErrorKind::Conflict,
                    StoreError::PreconditionsIgnored { .. } => ErrorKind::Conflict,
                    StoreError::Unreachable { .. }
                    | StoreError::NoSuchBucket { .. }
                    | StoreError::AccessDenied { .. }
                    | StoreError::NoCredentials { .. } => ErrorKind::Unavailable,
                    StoreError::Aborted { .. } | StoreError::Io { .. } | StoreError::Other { .. } => {
                        if e.is_retryable() { ErrorKind::Unavailable } else { ErrorKind::Internal }
                    }
                }
            }
        }
    }

    /// Whether trying the same thing again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store(e) => e.is_retryable() || e.is_precondition_failed(),
            _ => false,
        }
    }

    pub(crate) fn not_found(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::NotFound { what: what.into(), hint: hint.into() }
    }

    pub(crate) fn integrity(message: impl Into<String>) -> Self {
        Error::Integrity { message: message.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
