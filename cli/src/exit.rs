//! Exit codes and the CLI's error: every failure carries the class that picks its exit code
//! and a one-line message that says what to do next.
//!
//! The classes are core's [`ErrorKind`]; the CLI adds only its own sources of failure (flags,
//! the config file, the terminal) on top, each mapped to one of them.

use std::fmt;

use s3dock_core::ErrorKind;
use s3dock_core::names::NameError;
use s3dock_core::store::StoreError;

/// Success, including no-ops (tagging the same image again, promoting what is current).
pub const SUCCESS: u8 = 0;

/// The exit-code table, shown by `--help` and kept in sync with `docs/cli.md` by a test.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success, including no-ops (tag or promote what is already there)
  1  internal error (a bug, or an unexpected local failure)
  2  usage error: bad flags, invalid names, unknown profile, bad config file
  3  not found: no such image, tag, pointer or previous target
  4  conflict or refused: immutable tag, concurrent change, unsafe store, dirty tree, failed build
  5  integrity: malformed, cyclic or foreign pointer or tag, checksum mismatch
  6  unavailable: store or Docker unreachable, bucket missing, credentials refused or missing
  130  interrupted by Ctrl-C or SIGTERM: nothing was committed";

/// The exit code of a class of failure.
pub fn code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Internal => 1,
        ErrorKind::Usage => 2,
        ErrorKind::NotFound => 3,
        ErrorKind::Conflict => 4,
        ErrorKind::Integrity => 5,
        ErrorKind::Unavailable => 6,
        ErrorKind::Interrupted => 130,
    }
}

/// The class's name in `--json` errors.
pub fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Internal => "internal",
        ErrorKind::Usage => "usage",
        ErrorKind::NotFound => "not_found",
        ErrorKind::Conflict => "conflict",
        ErrorKind::Integrity => "integrity",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Interrupted => "interrupted",
    }
}

/// A failed command: its class and its one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    kind: ErrorKind,
    message: String,
}

impl CliError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        // Messages are printed as one line (and embedded in JSON): fold any newline a
        // lower layer let through.
        let message: String = message.into();
        let message = if message.contains('\n') {
            message.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
        } else {
            message
        };
        CliError { kind, message }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    pub fn interrupted(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Interrupted, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn exit_code(&self) -> u8 {
        code(self.kind)
    }

    /// The `--json` form: `{"error":{"kind":..,"message":..,"exit_code":..}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "kind": kind_name(self.kind),
                "message": self.message,
                "exit_code": self.exit_code(),
            }
        })
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<s3dock_core::Error> for CliError {
    fn from(e: s3dock_core::Error) -> Self {
        CliError::new(e.kind(), e.to_string())
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        s3dock_core::Error::from(e).into()
    }
}

impl From<NameError> for CliError {
    fn from(e: NameError) -> Self {
        CliError::usage(e.to_string())
    }
}

impl From<s3dock_engine::EngineError> for CliError {
    fn from(e: s3dock_engine::EngineError) -> Self {
        use s3dock_engine::EngineError as E;
        let kind = match &e {
            E::Unreachable { .. } => ErrorKind::Unavailable,
            E::ImageNotFound { .. } => ErrorKind::NotFound,
            E::Build { .. } => ErrorKind::Conflict,
            E::Load { .. } => ErrorKind::Integrity,
            E::Daemon { status: 404, .. } => ErrorKind::NotFound,
            E::Daemon { status: 409, .. } => ErrorKind::Conflict,
            E::Daemon { status, .. } if *status >= 500 => ErrorKind::Unavailable,
            E::Io { .. } if e.is_retryable() => ErrorKind::Unavailable,
            E::Daemon { .. } | E::Protocol { .. } | E::Io { .. } => ErrorKind::Internal,
        };
        CliError::new(kind, e.to_string())
    }
}

impl From<s3dock_engine::BuildError> for CliError {
    fn from(e: s3dock_engine::BuildError) -> Self {
        use s3dock_engine::{BuildError, ContextError, GitError};
        match e {
            BuildError::Engine(e) => e.into(),
            BuildError::Git(GitError::Git { .. }) => CliError::internal(e.to_string()),
            BuildError::Git(_) => CliError::conflict(e.to_string()),
            BuildError::Context(ContextError::Io { .. }) => CliError::internal(e.to_string()),
            BuildError::Context(_) => CliError::usage(e.to_string()),
        }
    }
}

impl From<s3dock_engine::ship::ShipError> for CliError {
    fn from(e: s3dock_engine::ship::ShipError) -> Self {
        use s3dock_engine::ship::ShipError;
        match e {
            ShipError::Engine(e) => e.into(),
            ShipError::Registry(e) => e.into(),
            ShipError::Refused { message } => CliError::conflict(message),
            ShipError::Integrity { message } => CliError::new(ErrorKind::Integrity, message),
        }
    }
}

/// A deploy that could not run. (A deploy that ran and failed or rolled back is a report, not
/// an error; `s3dock deploy` turns it into a conflict, exit 4, with the reason.)
impl From<s3dock_engine::DeployError> for CliError {
    fn from(e: s3dock_engine::DeployError) -> Self {
        use s3dock_engine::DeployError as D;
        use s3dock_engine::deploy::{StateError, TrafficError};
        match e {
            D::Engine(e) => e.into(),
            D::Spec(_) => CliError::usage(e.to_string()),
            D::State(StateError::Corrupt { .. }) | D::Traffic(TrafficError::Corrupt { .. }) => {
                CliError::new(ErrorKind::Integrity, e.to_string())
            }
            // The state directory cannot be written (permissions, a missing mount).
            D::State(StateError::Io { .. }) => CliError::internal(e.to_string()),
            // Another deploy holds the service; a foreign container holds a name; the driver
            // refused; an interrupted deploy could not be settled yet.
            D::State(StateError::Busy { .. }) | D::Traffic(_) | D::Conflict { .. } | D::Incomplete { .. } => {
                CliError::conflict(e.to_string())
            }
            D::Cancelled { .. } => CliError::interrupted(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_documented() {
        let kinds = [
            ErrorKind::Internal,
            ErrorKind::Usage,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Integrity,
            ErrorKind::Unavailable,
            ErrorKind::Interrupted,
        ];
        let mut codes: Vec<u8> = kinds.iter().map(|k| code(*k)).collect();
        codes.sort();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6, 130]);
        for k in kinds {
            assert!(EXIT_CODES_HELP.contains(&format!("  {}  ", code(k))), "{k:?}");
        }
    }

    #[test]
    fn core_errors_keep_their_class() {
        let e: CliError = StoreError::NoSuchBucket { bucket: "b-1".into() }.into();
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::Unavailable, 6));
        assert!(e.message().contains("b-1"));
        let e: CliError = s3dock_core::names::AppName::parse("A").unwrap_err().into();
        assert_eq!(e.exit_code(), 2);
        let j = e.to_json();
        assert_eq!(j["error"]["kind"], "usage");
        assert_eq!(j["error"]["exit_code"], 2);
    }

    #[test]
    fn deploy_errors_map_to_documented_codes() {
        use s3dock_engine::DeployError;
        use s3dock_engine::deploy::{SpecError, StateError};
        let busy = StateError::Busy { app: "web".into(), env: "prod".into(), path: "/s/web/prod.lock".into() };
        for (e, code) in [
            (DeployError::State(busy), 4),
            (DeployError::Conflict { message: "foreign container".into() }, 4),
            (DeployError::Engine(s3dock_engine::EngineError::Unreachable { detail: "down".into() }), 6),
            (DeployError::Spec(SpecError::new("ports", "same")), 2),
            (DeployError::Cancelled { what: "stopped".into() }, 130),
            (DeployError::State(StateError::Corrupt { path: "/s".into(), detail: "x".into() }), 5),
        ] {
            let shown = e.to_string();
            let cli: CliError = e.into();
            assert_eq!(cli.exit_code(), code, "{shown}");
        }
    }

    #[test]
    fn messages_are_one_line() {
        let e = CliError::internal("first\n  second\n\nthird");
        assert_eq!(e.message(), "first second third");
    }
}
