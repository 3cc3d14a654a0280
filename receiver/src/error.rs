//! Why the receiver could not start or run.

use sluice_common::config::UsageError;
use sluice_common::exit::ExitStatus;
use sluice_common::keys::KeyError;

/// Why the receiver could not start or run (the objects' own failures are outcomes, not
/// errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad usage or configuration (exit status 2).
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// A key file that cannot be used (exit status 2), named by its option.
    #[error("--{option}: {source}")]
    Key {
        /// The option that named the file.
        option: &'static str,
        /// What is wrong with it.
        source: KeyError,
    },
    /// The file system or the link failed (exit status 1).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// The exit status this error implies.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Usage(_) | Error::Key { .. } => ExitStatus::Usage,
            Error::Io { .. } => ExitStatus::Failure,
        }
    }
}

/// Wraps an I/O error with what was being done.
pub(crate) fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The exit status a state-directory problem implies: a directory others can reach, or of an
/// unknown format, is configuration (2); the rest is runtime (1).
pub(crate) fn state_error(e: crate::state::StateError) -> Error {
    use crate::state::StateError;
    match e {
        StateError::NotPrivate { .. } | StateError::Version { .. } => {
            Error::Usage(UsageError(e.to_string()))
        }
        other => Error::Io {
            what: "the state directory".into(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}

/// Wraps a key error with the option that named the file.
pub(crate) fn key_error(option: &'static str) -> impl FnOnce(KeyError) -> Error {
    move |source| Error::Key { option, source }
}
