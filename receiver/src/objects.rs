//! The object table: what the receiver knows about every object it is rebuilding, shared by
//! the link task (which asks, when a block starts, whether it is needed at all), the decoders
//! (which record stored segments) and the sink (which decides when an object is complete,
//! publishes it and reports failures).
//!
//! Delivered objects leave the table (their done marker in the state directory answers for
//! them); failed ones stay, so late symbols of theirs are dropped cheaply.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_protocol::manifest::Manifest;
use sluice_protocol::wire::{BlockKey, BlockKind};

use crate::state::{ObjectKey, StateDir};

/// Where an object stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Still collecting blocks (or being published).
    Open,
    /// Refused or failed for good in this run; its blocks are no longer needed.
    Failed,
    /// Published, waiting for its directory's fsync before it is recorded done.
    Done,
}

/// One object in progress.
#[derive(Debug)]
pub struct Entry {
    /// Open or failed.
    pub status: Status,
    /// When a block of it first arrived in this run (`None`: only known from the state dir).
    pub first_seen: Option<std::time::Instant>,
    /// The verified manifest, once decoded.
    pub manifest: Option<Arc<Manifest>>,
    /// Stored segments and the SHA-256 of their ciphertext.
    pub segments: BTreeMap<u32, [u8; 32]>,
    /// Blocks whose partial symbols are saved in the state dir.
    pub partials: BTreeSet<(BlockKind, u32)>,
}

impl Entry {
    fn new(first_seen: Option<std::time::Instant>) -> Self {
        Entry {
            status: Status::Open,
            first_seen,
            manifest: None,
            segments: BTreeMap::new(),
            partials: BTreeSet::new(),
        }
    }

    /// Segments the manifest lists that are not stored: `(missing, total)`.
    pub fn missing(&self) -> Option<(usize, usize)> {
        let manifest = self.manifest.as_ref()?;
        let total = manifest.segments.len();
        let held = self
            .segments
            .keys()
            .filter(|i| (**i as usize) < total)
            .count();
        Some((total - held, total))
    }

    /// Whether the manifest and every segment it lists are stored.
    pub fn is_complete(&self) -> bool {
        self.missing().is_some_and(|(missing, _)| missing == 0)
    }
}

/// What the link task should do with a block that just started assembling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAction {
    /// Nothing known: assemble it from the link.
    Assemble,
    /// Already stored, delivered or not wanted: release it.
    MarkDone,
    /// The first block seen in this run of an object an earlier run (or pass) delivered:
    /// release it, and say so once.
    AlreadyDone,
    /// Symbols of it were saved earlier: load and restore them.
    Restore,
}

/// Every object in progress, by key.
#[derive(Debug, Default)]
pub struct Index {
    objects: HashMap<ObjectKey, Entry>,
}

impl Index {
    /// The entry of `obj`, if it is in progress or failed.
    pub fn get(&self, obj: &ObjectKey) -> Option<&Entry> {
        self.objects.get(obj)
    }

    /// The entry of `obj`, mutable.
    pub fn get_mut(&mut self, obj: &ObjectKey) -> Option<&mut Entry> {
        self.objects.get_mut(obj)
    }

    /// Adds an object found in the state dir at start.
    pub fn insert_leftover(&mut self, obj: ObjectKey) -> &mut Entry {
        self.objects.entry(obj).or_insert_with(|| Entry::new(None))
    }

    /// Forgets a delivered object.
    pub fn remove(&mut self, obj: &ObjectKey) {
        self.objects.remove(obj);
    }

    /// Whether blocks of `obj` are still wanted.
    pub fn is_open(&self, obj: &ObjectKey) -> bool {
        self.objects
            .get(obj)
            .is_some_and(|e| e.status == Status::Open)
    }

    /// Decides about a block that started assembling; notes the object as seen.
    pub fn on_block_started(
        &mut self,
        key: &BlockKey,
        state: &StateDir,
        now: std::time::Instant,
    ) -> StartAction {
        let obj = ObjectKey::of(key);
        let Some(entry) = self.objects.get_mut(&obj) else {
            let mut entry = Entry::new(Some(now));
            let action = if state.is_done(obj) {
                // Remembered for the run, so its other blocks need no file-system lookup.
                entry.status = Status::Done;
                StartAction::AlreadyDone
            } else {
                StartAction::Assemble
            };
            self.objects.insert(obj, entry);
            return action;
        };
        entry.first_seen.get_or_insert(now);
        if entry.status != Status::Open {
            return StartAction::MarkDone;
        }
        let stored = match key.kind {
            BlockKind::Data => entry.segments.contains_key(&key.index),
            BlockKind::Manifest => entry.manifest.is_some(),
        };
        if stored {
            StartAction::MarkDone
        } else if entry.partials.contains(&(key.kind, key.index)) {
            StartAction::Restore
        } else {
            StartAction::Assemble
        }
    }

    /// Objects seen in this run that are neither delivered nor failed.
    pub fn incomplete(&self) -> impl Iterator<Item = (&ObjectKey, &Entry)> {
        self.objects
            .iter()
            .filter(|(_, e)| e.status == Status::Open && e.first_seen.is_some())
    }

    /// Open objects whose manifest and segments are all stored.
    pub fn complete(&self) -> Vec<ObjectKey> {
        let mut keys: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, e)| e.status == Status::Open && e.is_complete())
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        keys
    }
}

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
    /// A decoded segment does not have the SHA-256 the signed manifest gives.
    SegmentMismatch(u32),
    /// A decoded segment the manifest does not list, or of another length.
    SegmentUnexpected(u32),
    /// A stored segment changed on disk after it was decoded and checked.
    StoredSegmentDamaged(u32),
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
}

impl Failure {
    /// Whether the stored blocks are kept for a later pass or run (the object is merely
    /// incomplete) rather than discarded (it was refused, or the disk failed: its blocks
    /// would only hold space other objects need; a later sender run brings them again).
    pub fn keeps_state(&self) -> bool {
        matches!(self, Failure::Incomplete { .. } | Failure::NoManifest)
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
            Failure::PathRefused { path, error } => write!(f, "refused path {path:?}: {error}"),
            Failure::SegmentMismatch(i) => write!(f, "segment {i} SHA-256 mismatch"),
            Failure::SegmentUnexpected(i) => {
                write!(
                    f,
                    "segment {i} is not in the manifest or has another length"
                )
            }
            Failure::StoredSegmentDamaged(i) => {
                write!(f, "stored segment {i} damaged in the state directory")
            }
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::wire::{ObjectId, SessionId};

    fn key(kind: BlockKind, index: u32) -> BlockKey {
        BlockKey {
            session: SessionId(1),
            object: ObjectId(2),
            kind,
            index,
        }
    }

    #[test]
    fn started_blocks_are_assembled_once_then_released() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let now = std::time::Instant::now();
        let mut index = Index::default();
        let data0 = key(BlockKind::Data, 0);
        assert_eq!(
            index.on_block_started(&data0, &state, now),
            StartAction::Assemble
        );
        let obj = ObjectKey::of(&data0);
        index.get_mut(&obj).unwrap().segments.insert(0, [0; 32]);
        assert_eq!(
            index.on_block_started(&data0, &state, now),
            StartAction::MarkDone
        );
        index
            .get_mut(&obj)
            .unwrap()
            .partials
            .insert((BlockKind::Data, 1));
        assert_eq!(
            index.on_block_started(&key(BlockKind::Data, 1), &state, now),
            StartAction::Restore
        );
        assert_eq!(index.incomplete().count(), 1);
        index.get_mut(&obj).unwrap().status = Status::Failed;
        assert_eq!(
            index.on_block_started(&key(BlockKind::Manifest, 0), &state, now),
            StartAction::MarkDone
        );
        // A delivered object is answered by its done marker, once; then from memory.
        index.remove(&obj);
        state.mark_done(obj).unwrap();
        assert_eq!(
            index.on_block_started(&data0, &state, now),
            StartAction::AlreadyDone
        );
        assert_eq!(
            index.on_block_started(&key(BlockKind::Manifest, 0), &state, now),
            StartAction::MarkDone
        );
        assert_eq!(index.incomplete().count(), 0);
    }

    #[test]
    fn failure_texts_are_the_documented_phrases() {
        assert_eq!(
            Failure::SegmentMismatch(3).to_string(),
            "segment 3 SHA-256 mismatch"
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
