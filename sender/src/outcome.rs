//! What happened to each object the sender was given, emitted at one place (the send loop) to
//! every subscriber: the log line, the counters the summary reads, and later the audit log
//! and metrics.

use std::path::PathBuf;
use std::sync::Arc;

use sluice_common::audit::{AuditLog, Event};
use sluice_common::outcome::Subscriber;

/// The fate of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Left out on purpose (a symlink, device, FIFO or socket): a warning, not a failure.
    Skipped { path: PathBuf, reason: String },
    /// Refused up front (a name the receiver would refuse): an error the operator must see.
    Refused { path: PathBuf, reason: String },
    /// Every block of its first pass, manifest last, went to the link queue.
    Queued {
        path: String,
        size: u64,
        /// Its content's SHA-256 (none for a directory: logged empty, as the receiver does).
        sha256: Option<[u8; 32]>,
        /// Data segments of its object (0 when its content travels inline).
        segments: usize,
        /// It travels in a pack with other small entries.
        packed: bool,
    },
    /// Every block of every pass has left on the link.
    Sent { path: String, size: u64 },
    /// It could not be read or encoded; none of its later blocks will go out.
    Failed { path: String, reason: String },
}

impl Outcome {
    /// The outcome of an entry left out or refused when the paths were expanded.
    pub fn not_sent(skipped: crate::objects::Skipped) -> Outcome {
        let crate::objects::Skipped {
            path,
            reason,
            refused,
        } = skipped;
        if refused {
            Outcome::Refused { path, reason }
        } else {
            Outcome::Skipped { path, reason }
        }
    }
}

/// The sender's log line for every outcome.
#[derive(Debug, Default)]
pub(crate) struct LogLine;

impl Subscriber<Outcome> for LogLine {
    fn on_outcome(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Skipped { path, reason } => {
                tracing::warn!(path = %path.display(), "{reason}")
            }
            Outcome::Refused { path, reason } => {
                tracing::error!(path = %path.display(), "{reason}")
            }
            Outcome::Queued {
                path,
                size,
                sha256,
                segments,
                packed,
            } => tracing::info!(
                path = %path,
                size,
                sha256 = %sha256.map(hex::encode).unwrap_or_default(),
                segments,
                packed,
                "object queued"
            ),
            Outcome::Sent { path, size } => tracing::debug!(path = %path, size, "object sent"),
            Outcome::Failed { path, reason } => {
                tracing::error!(path = %path, reason = %reason, "object not sent: {reason}")
            }
        }
    }
}

/// Every outcome as a record of the audit log.
pub(crate) struct AuditTrail(pub Arc<AuditLog>);

impl Subscriber<Outcome> for AuditTrail {
    fn on_outcome(&mut self, outcome: &Outcome) {
        let event = match outcome {
            Outcome::Skipped { path, reason } => Event::new("skipped")
                .with("path", path.display().to_string())
                .with("reason", reason.clone()),
            Outcome::Refused { path, reason } => Event::new("refused")
                .with("path", path.display().to_string())
                .with("reason", reason.clone()),
            Outcome::Queued {
                path, size, sha256, ..
            } => Event::new("queued")
                .with("path", path.clone())
                .with("size", *size)
                .with("sha256", sha256.map(hex::encode).unwrap_or_default()),
            Outcome::Sent { path, size } => Event::new("sent")
                .with("path", path.clone())
                .with("size", *size),
            Outcome::Failed { path, reason } => Event::new("failed")
                .with("path", path.clone())
                .with("reason", reason.clone()),
        };
        self.0.record(event);
    }
}
