//! Why the sender could not start or finish a run (an object that cannot be sent is an
//! outcome, not an error).

use sluice_common::config::UsageError;
use sluice_common::exit::ExitStatus;
use sluice_common::keys::KeyError;

use crate::encode::EncodeError;

/// Why the sender could not start or finish a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad usage or configuration (exit status 2).
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// A key file that cannot be used (exit status 2), named by its option.
    #[error("--{option}: {source}")]
    Key {
        option: &'static str,
        source: KeyError,
    },
    /// No path named anything that can be sent.
    #[error("nothing to send")]
    NothingToSend,
    /// The link could not be opened or failed.
    #[error("link {link}: {source}")]
    Link {
        link: String,
        source: std::io::Error,
    },
    /// The spool directory for later passes.
    #[error("--spool: {0}")]
    Spool(std::io::Error),
    /// No OS randomness for the session id.
    #[error("no OS randomness for the session id: {0}")]
    Random(String),
    /// A thread could not be started.
    #[error("cannot start the encoder thread: {0}")]
    Thread(std::io::Error),
    /// `--metrics` could not be served.
    #[error("cannot listen on --metrics {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The audit log cannot be opened.
    #[error("cannot open --audit-log {path}: {source}")]
    Audit {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// An export approval policy is configured and PATH... are not approved by it.
    #[error("{0}")]
    NotApproved(String),
    /// `--policy` refuses files (each is logged with its rule); nothing was sent.
    #[error("refused by policy: {0} file(s) would be quarantined by the receiver; nothing sent")]
    PolicyRefused(usize),
    /// The watch daemon's outbox, sent directory or journal.
    #[error("{0}")]
    Watch(String),
    /// The encode pipeline stopped.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl Error {
    /// The exit status this error implies.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Usage(_) | Error::Key { .. } => ExitStatus::Usage,
            _ => ExitStatus::Failure,
        }
    }
}

/// Wraps a key error with the option that named the file.
pub(crate) fn key(option: &'static str) -> impl FnOnce(KeyError) -> Error {
    move |source| Error::Key { option, source }
}
