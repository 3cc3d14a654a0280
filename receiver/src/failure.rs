//! Why an object was not delivered. The `Display` texts are stable: operators and tests grep
//! for them (README.md lists them).

use std::fmt;
use std::path::PathBuf;

/// Why an object was not delivered. The `Display` texts are stable: operators and tests
/// grep for them (see README.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No `--identity` key opens the manifest.
    ManifestUndecryptable {
        /// The `--identity` file.
        identity: PathBuf,
        /// age's reason.
        error: String,
    },
    /// The manifest signature is by a key not given with `--trust`.
    UntrustedSigner(String),
    /// The signature does not verify, or is malformed.
    BadSignature(String),
    /// The manifest does not decode or breaks a limit.
    ManifestMalformed(String),
    /// The manifest names another session or object than the block that carried it.
    ManifestMismatch,
    /// The path is hostile, reserved or clashes with what is in `--out`.
    PathRefused {
        /// The path as the manifest gives it.
        path: String,
        /// Why.
        error: String,
    },
    /// A decoded segment is not the one the signed manifest binds (another age file: its
    /// header MAC differs).
    SegmentMismatch(u32),
    /// A decoded segment the manifest does not list, or of another length.
    SegmentUnexpected(u32),
    /// A data block's segment size (wire header) differs from the manifest's or from the
    /// object's other blocks'.
    SegmentSize {
        /// The segment.
        index: u32,
        /// The manifest's (or the first block's) segment size.
        expected: u32,
        /// The block's.
        got: u32,
    },
    /// A segment does not decrypt.
    SegmentUndecryptable(u32, String),
    /// The decrypted content is not as long as the manifest says.
    SizeMismatch {
        /// Manifest size.
        expected: u64,
        /// Bytes decrypted.
        got: u64,
    },
    /// The decrypted content's SHA-256 differs from the manifest's.
    ContentMismatch,
    /// A block could not be decoded.
    Decode(String),
    /// The file system refused (disk full, permissions, ...).
    Io(String),
    /// The run ended with segments missing.
    Incomplete {
        /// Segments not received.
        missing: usize,
        /// Segments the manifest lists.
        total: usize,
    },
    /// The run ended without the manifest.
    NoManifest,
    /// The sender announced the object (heartbeat) but none of its frames arrived.
    LostWhole,
    /// The manifest's sequence is below what this receiver delivered at the path for the
    /// same signer: a replay that would roll the file back.
    Stale,
    /// Set aside to keep the state directory within its bounds.
    Evicted(String),
    /// `--approval-policy` is set and the object's approval does not pass it (the stable
    /// phrases of `sluice_common::approval::ApprovalError`).
    NotApproved(String),
    /// `--approval-policy` sets export budgets and the file does not fit what this receiver
    /// delivered in the last day (`sluice_common::budget::Exceeded`'s phrase).
    OverBudget(String),
    /// The object store did not take the file before the receiver stopped: it stays in the
    /// state directory and is uploaded at the next start.
    StoreUnavailable(String),
    /// `--policy` refused the file (the rule, `sluice_inspect::Refusal`'s phrase); it went to
    /// the quarantine directory (where), or could not (why).
    Refused {
        reason: String,
        quarantined: Result<std::path::PathBuf, String>,
        /// The inspectors' report was kept beside the quarantined file (`NAME.report.json`).
        report: bool,
    },
}

impl Failure {
    /// Whether the stored blocks are kept for a later pass or run (the object is merely
    /// incomplete) rather than discarded (it was refused, or the disk failed: its blocks
    /// would only hold space other objects need; a later sender run brings them again).
    pub fn keeps_state(&self) -> bool {
        matches!(
            self,
            Failure::Incomplete { .. } | Failure::NoManifest | Failure::StoreUnavailable(_)
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::ManifestUndecryptable { identity, error } => write!(
                f,
                "cannot decrypt manifest with --identity {}: {error}",
                identity.display()
            ),
            Failure::UntrustedSigner(id) => write!(f, "manifest signed by untrusted key {id}"),
            Failure::BadSignature(e) => write!(f, "manifest signature rejected: {e}"),
            Failure::ManifestMalformed(e) => write!(f, "manifest malformed: {e}"),
            Failure::ManifestMismatch => {
                f.write_str("manifest names another session or object than its block")
            }
            Failure::PathRefused { path, error } => write!(
                f,
                "refused path \"{}\": {error}",
                sluice_common::paths::escaped(path)
            ),
            Failure::SegmentMismatch(i) => {
                write!(f, "segment {i} does not match the signed manifest")
            }
            Failure::SegmentUnexpected(i) => {
                write!(
                    f,
                    "segment {i} is not in the manifest or has another length"
                )
            }
            Failure::SegmentSize {
                index,
                expected,
                got,
            } => write!(
                f,
                "segment {index} carries segment size {got}, the object has {expected}"
            ),
            Failure::SegmentUndecryptable(i, e) => write!(f, "segment {i} does not decrypt: {e}"),
            Failure::SizeMismatch { expected, got } => write!(
                f,
                "size mismatch: manifest says {expected} bytes, content has {got}"
            ),
            Failure::ContentMismatch => f.write_str("content SHA-256 mismatch"),
            Failure::Decode(e) => write!(f, "FEC decoding failed: {e}"),
            Failure::Io(e) => f.write_str(e),
            Failure::Incomplete { missing, total } => {
                write!(f, "incomplete: {missing} of {total} segments missing")
            }
            Failure::NoManifest => f.write_str("manifest never arrived"),
            Failure::Stale => f.write_str("stale: older than the delivered version"),
            Failure::Evicted(why) => write!(f, "evicted: {why}"),
            Failure::NotApproved(why) | Failure::OverBudget(why) => f.write_str(why),
            Failure::StoreUnavailable(why) => write!(
                f,
                "not uploaded before the receiver stopped: {why} (kept in the state directory \
                 for the next start)"
            ),
            Failure::Refused {
                reason,
                quarantined: Ok(at),
                ..
            } => write!(
                f,
                "refused by policy: {reason} (quarantined: {})",
                at.display()
            ),
            Failure::Refused {
                reason,
                quarantined: Err(why),
                ..
            } => write!(
                f,
                "refused by policy: {reason} (not quarantined: {why}; removed)"
            ),
            Failure::LostWhole => f.write_str(
                "lost whole: the sender announced it but none of its frames arrived \
                 (or the sender could not read it)",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_texts_are_the_documented_phrases() {
        assert_eq!(
            Failure::SegmentMismatch(3).to_string(),
            "segment 3 does not match the signed manifest"
        );
        assert_eq!(
            Failure::Incomplete {
                missing: 3,
                total: 12
            }
            .to_string(),
            "incomplete: 3 of 12 segments missing"
        );
        assert_eq!(Failure::NoManifest.to_string(), "manifest never arrived");
        assert!(Failure::ManifestUndecryptable {
            identity: "k/receiver.key".into(),
            error: "no match".into()
        }
        .to_string()
        .starts_with("cannot decrypt manifest with --identity k/receiver.key"));
        assert_eq!(
            Failure::UntrustedSigner("ABCD".into()).to_string(),
            "manifest signed by untrusted key ABCD"
        );
    }
}
