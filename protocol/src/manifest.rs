//! The manifest: what an object is, signed by the sender and encrypted to the receiver.
//!
//! An object is either one file or directory whose content travels in data segments (each an
//! independent age file, in [`BlockKind::Data`](crate::wire::BlockKind) blocks), or a *pack*
//! of small files and directories whose content travels inline, in the manifest block itself
//! (one X25519 exchange, one signature and one FEC block for hundreds of small files). The
//! manifest block goes after the data segments (the segment bindings are known only once the
//! content has been encrypted). Nothing in it crosses the link in clear: the daemons sign the
//! postcard bytes of [`Manifest`] and age-encrypt the resulting [`SignedManifest`].
//!
//! ```text
//!  manifest block data = age( postcard(SignedManifest {
//!                              manifest:  postcard(Manifest),   // what is signed
//!                              signature,
//!                              inline:    content of a pack's files, back to back }) )
//! ```
//!
//! Decoding enforces hard limits so a hostile (but correctly signed) manifest cannot make the
//! receiver allocate without bound; every path is checked again by the receiver before
//! anything touches the file system.

use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::wire::{ObjectId, SessionId, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};

/// Manifest format version inside the signed bytes (3: segments bound by their age header
/// MAC instead of a ciphertext hash; entries, and packs of small files with inline content;
/// 4: an export approval may travel with the object).
pub const MANIFEST_VERSION: u8 = 4;
/// Longest relative path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Most segments one object may have (1 TiB at the default 1 MiB segment size).
pub const MAX_SEGMENTS: usize = 1 << 20;
/// Most entries in one pack.
pub const MAX_ENTRIES: usize = 4096;
/// Most bytes of inline content (a pack's files together).
pub const MAX_INLINE_LEN: usize = MAX_SEGMENT_SIZE as usize;
/// Most bytes the paths of one manifest may take together.
pub const MAX_PATHS_LEN: usize = 1 << 20;
/// Longest signature accepted inside the envelope, and longest approval signature.
pub const MAX_SIGNATURE_LEN: usize = 1024;
/// Longest export request carried in an [`Approval`] (about 6 000 files' lines).
pub const MAX_REQUEST_LEN: usize = 1 << 20;
/// Most approval signatures carried in an [`Approval`].
pub const MAX_APPROVAL_SIGNATURES: usize = 32;
/// Longest encoded manifest accepted: the fixed fields, the segments, the paths and the other
/// fields of every entry, and an approval.
pub const MAX_ENCODED_LEN: usize = 64
    + MAX_SEGMENTS * 40
    + MAX_PATHS_LEN
    + MAX_ENTRIES * 96
    + MAX_REQUEST_LEN
    + MAX_APPROVAL_SIGNATURES * (MAX_SIGNATURE_LEN + 4)
    + 16;
/// Longest encoded envelope accepted.
pub const MAX_ENVELOPE_LEN: usize = MAX_ENCODED_LEN + MAX_SIGNATURE_LEN + MAX_INLINE_LEN + 32;

/// What kind of file-system entry an entry recreates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file (also a stream read from stdin).
    File,
    /// A directory (possibly empty); it has no content.
    Directory,
}

/// One encrypted segment of an object's content: an age file whose plaintext is bytes
/// `[i·segment_size, …)` of the content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// Ciphertext bytes: the block length of the segment's data block.
    pub ciphertext_len: u32,
    /// The MAC of the segment's age header (the 32 bytes after `---`): it binds the file key
    /// the segment was encrypted under, so a segment not made by the sender (or a recipient)
    /// is refused as soon as it is decoded. SPEC.md section 8 has the argument.
    pub header_mac: [u8; 32],
}

/// One file or directory an object recreates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path with `/` separators, as the sender saw it.
    pub path: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Plaintext length in bytes (0 for a directory).
    pub size: u64,
    /// Unix permission bits (`0o7777` at most).
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime_secs: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nanos: u32,
    /// SHA-256 of the file's content (all zeros for a directory).
    pub sha256: [u8; 32],
}

/// Everything the receiver needs to rebuild and verify one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u8,
    /// Sender run; must equal the session of the block that carried it.
    pub session: SessionId,
    /// Object number; must equal the object of the block that carried it.
    pub object: ObjectId,
    /// Freshness: a number that only grows for each signing key, across sender restarts
    /// (the sender's clock in microseconds, never below the last one it issued). A receiver
    /// keeps the highest it delivered per key and path, and refuses anything older: a
    /// recorded transfer replayed later cannot roll a file back.
    pub sequence: u64,
    /// What the object recreates: one entry, or a pack's entries in content order.
    pub entries: Vec<Entry>,
    /// Plaintext bytes per segment (the last one may be shorter); 0 when the content is
    /// inline (a pack, a directory or an empty file).
    pub segment_size: u32,
    /// The encrypted segments, in order (none when the content is inline).
    pub segments: Vec<SegmentInfo>,
    /// The export approval the sender checked before sending, if it was given one: a
    /// receiver with an approval policy checks it again itself (the sender's signature over
    /// this manifest binds the approval to exactly these entries).
    pub approval: Option<Approval>,
}

/// An export request and the approvers' signatures over it, as the sender was given them.
/// The protocol does not interpret them; the daemons do (`sluice_common::approval`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The request's exact bytes (the TOML text approvers signed), at most
    /// [`MAX_REQUEST_LEN`].
    pub request: Vec<u8>,
    /// Minisign signature files over `request`, at most [`MAX_APPROVAL_SIGNATURES`] of at most
    /// [`MAX_SIGNATURE_LEN`] bytes each.
    pub signatures: Vec<Vec<u8>>,
}

/// A manifest plus the sender's signature over its exact bytes, and a pack's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedManifest {
    /// `postcard` bytes of a [`Manifest`]: what the signature covers.
    pub manifest: Vec<u8>,
    /// Detached signature (a minisign signature file's bytes).
    pub signature: Vec<u8>,
    /// The content of the entries when it is inline, back to back in entry order; each
    /// file's SHA-256 in the signed manifest covers its part.
    pub inline: Vec<u8>,
}

/// Why manifest bytes were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestError {
    /// Longer than its limit.
    TooLong,
    /// Does not decode, or has trailing bytes.
    Malformed,
    /// Unknown manifest version.
    Version,
    /// Path longer than [`MAX_PATH_LEN`], or paths longer than [`MAX_PATHS_LEN`] together.
    PathTooLong,
    /// More than [`MAX_SEGMENTS`] segments or [`MAX_ENTRIES`] entries.
    TooManySegments,
    /// Sizes, segments and entries disagree, a directory has content, or a pack names a
    /// path twice.
    Inconsistent,
    /// Mode has bits outside `0o7777`.
    Mode,
    /// The approval's request or signatures break their limits.
    Approval,
}

impl Manifest {
    /// Encodes to the canonical bytes that get signed.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        let bytes = postcard::to_allocvec(self).map_err(|_| ManifestError::Malformed)?;
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(ManifestError::TooLong);
        }
        Ok(bytes)
    }

    /// Decodes and checks limits and internal consistency.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(ManifestError::TooLong);
        }
        // The version byte leads; check it before trusting the rest of the layout.
        if bytes.first() != Some(&MANIFEST_VERSION) {
            return Err(ManifestError::Version);
        }
        let (manifest, rest) =
            postcard::take_from_bytes::<Manifest>(bytes).map_err(|_| ManifestError::Malformed)?;
        if !rest.is_empty() {
            return Err(ManifestError::Malformed);
        }
        manifest.validate()?;
        // postcard also accepts over-long varints; insisting on the one canonical encoding
        // means a signed manifest has exactly one byte form (found by the `manifest` fuzzer).
        if manifest.to_bytes()? != bytes {
            return Err(ManifestError::Malformed);
        }
        Ok(manifest)
    }

    /// Checks limits and that sizes, segments and entries agree.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.version != MANIFEST_VERSION {
            return Err(ManifestError::Version);
        }
        if self.segments.len() > MAX_SEGMENTS || self.entries.len() > MAX_ENTRIES {
            return Err(ManifestError::TooManySegments);
        }
        if self.entries.is_empty() {
            return Err(ManifestError::Inconsistent);
        }
        if let Some(approval) = &self.approval {
            if approval.request.len() > MAX_REQUEST_LEN
                || approval.signatures.len() > MAX_APPROVAL_SIGNATURES
                || approval
                    .signatures
                    .iter()
                    .any(|s| s.len() > MAX_SIGNATURE_LEN)
            {
                return Err(ManifestError::Approval);
            }
        }
        let paths: usize = self.entries.iter().map(|e| e.path.len()).sum();
        if paths > MAX_PATHS_LEN {
            return Err(ManifestError::PathTooLong);
        }
        let mut content: u64 = 0;
        for entry in &self.entries {
            if entry.path.len() > MAX_PATH_LEN {
                return Err(ManifestError::PathTooLong);
            }
            if entry.mode & !0o7777 != 0 {
                return Err(ManifestError::Mode);
            }
            if entry.kind == EntryKind::Directory && (entry.size != 0 || entry.sha256 != [0; 32]) {
                return Err(ManifestError::Inconsistent);
            }
            content = content
                .checked_add(entry.size)
                .ok_or(ManifestError::Inconsistent)?;
        }
        if self.entries.len() > 1 {
            let mut seen = BTreeSet::new();
            if !self.entries.iter().all(|e| seen.insert(e.path.as_str())) {
                return Err(ManifestError::Inconsistent);
            }
        }
        if self.segment_size == 0 {
            // Inline content: a pack, a directory or an empty file.
            if !self.segments.is_empty() || content > MAX_INLINE_LEN as u64 {
                return Err(ManifestError::Inconsistent);
            }
            return Ok(());
        }
        // Segmented content: one file, in segments the wire format can carry.
        let [entry] = self.entries.as_slice() else {
            return Err(ManifestError::Inconsistent);
        };
        if entry.kind != EntryKind::File
            || !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size)
            || self.segments.len() as u64 != entry.size.div_ceil(u64::from(self.segment_size))
        {
            return Err(ManifestError::Inconsistent);
        }
        Ok(())
    }

    /// Whether the content travels inline, in the manifest envelope.
    pub fn is_inline(&self) -> bool {
        self.segment_size == 0
    }

    /// Plaintext bytes of all entries together.
    pub fn content_len(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// Plaintext bytes segment `index` holds, or `None` past the end.
    pub fn segment_plain_len(&self, index: usize) -> Option<u64> {
        if index >= self.segments.len() {
            return None;
        }
        let start = index as u64 * u64::from(self.segment_size);
        Some((self.content_len() - start).min(u64::from(self.segment_size)))
    }
}

impl SignedManifest {
    /// Encodes the envelope (the plaintext the daemons encrypt).
    pub fn to_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        let bytes = postcard::to_allocvec(self).map_err(|_| ManifestError::Malformed)?;
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(ManifestError::TooLong);
        }
        Ok(bytes)
    }

    /// Decodes the envelope; the signature is not checked here, nor the inline content
    /// against the manifest (the receiver hashes it while it writes it out).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(ManifestError::TooLong);
        }
        let (envelope, rest) = postcard::take_from_bytes::<SignedManifest>(bytes)
            .map_err(|_| ManifestError::Malformed)?;
        if !rest.is_empty()
            || envelope.manifest.len() > MAX_ENCODED_LEN
            || envelope.signature.len() > MAX_SIGNATURE_LEN
            || envelope.inline.len() > MAX_INLINE_LEN
            || envelope.to_bytes()? != bytes
        {
            return Err(ManifestError::Malformed);
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            size,
            mode: 0o644,
            mtime_secs: 1_700_000_000,
            mtime_nanos: 5,
            sha256: [9; 32],
        }
    }

    fn sample(size: u64, segment_size: u32) -> Manifest {
        let count = if segment_size == 0 {
            0
        } else {
            size.div_ceil(u64::from(segment_size))
        };
        Manifest {
            version: MANIFEST_VERSION,
            session: SessionId(7),
            object: ObjectId(3),
            sequence: 1_700_000_000_000_001,
            entries: alloc::vec![entry("data/ünï code/file 1.bin", size)],
            segment_size,
            segments: (0..count)
                .map(|i| SegmentInfo {
                    ciphertext_len: 100 + i as u32,
                    header_mac: [i as u8; 32],
                })
                .collect(),
            approval: None,
        }
    }

    fn pack(sizes: &[u64]) -> Manifest {
        let mut m = sample(0, 0);
        m.entries = sizes
            .iter()
            .enumerate()
            .map(|(i, size)| entry(&alloc::format!("small/{i}"), *size))
            .collect();
        m
    }

    #[test]
    fn over_long_varints_are_refused() {
        // Fuzzer input: an envelope whose first length is the varint 0x88 0x00 (8, over-long).
        let fuzzed = [
            0x88, 0x00, 0x01, 0x00, 0x40, 0x00, 0x88, 0x27, 0x80, 0x80, 0x01, 0x01,
        ];
        assert_eq!(
            SignedManifest::from_bytes(&fuzzed),
            Err(ManifestError::Malformed)
        );
        let m = sample(300_000, 1 << 16);
        let mut bytes = m.to_bytes().unwrap();
        // Re-encode the one-byte path length as a two-byte over-long varint.
        let at = bytes
            .iter()
            .position(|b| usize::from(*b) == m.entries[0].path.len())
            .unwrap();
        bytes[at] |= 0x80;
        bytes.insert(at + 1, 0x00);
        assert_eq!(Manifest::from_bytes(&bytes), Err(ManifestError::Malformed));
    }

    #[test]
    fn round_trip() {
        let m = sample(2_500_000, 1 << 20);
        assert_eq!(m.segments.len(), 3);
        let bytes = m.to_bytes().unwrap();
        assert_eq!(Manifest::from_bytes(&bytes).unwrap(), m);
        assert_eq!(m.segment_plain_len(2), Some(2_500_000 - 2 * (1 << 20)));
        assert_eq!(m.segment_plain_len(3), None);
        let env = SignedManifest {
            manifest: bytes,
            signature: b"sig".to_vec(),
            inline: Vec::new(),
        };
        assert_eq!(
            SignedManifest::from_bytes(&env.to_bytes().unwrap()).unwrap(),
            env
        );
    }

    #[test]
    fn packs_carry_their_content_inline() {
        let m = pack(&[10, 0, 4096]);
        assert!(m.validate().is_ok() && m.is_inline());
        assert_eq!(m.content_len(), 4106);
        assert_eq!(m.segment_plain_len(0), None);
        let env = SignedManifest {
            manifest: m.to_bytes().unwrap(),
            signature: b"sig".to_vec(),
            inline: alloc::vec![7; 4106],
        };
        assert_eq!(
            SignedManifest::from_bytes(&env.to_bytes().unwrap()).unwrap(),
            env
        );
        // A path twice, too much content, segments, or a segmented pack: refused.
        let mut twice = pack(&[1, 2]);
        twice.entries[1].path = twice.entries[0].path.clone();
        assert_eq!(twice.validate(), Err(ManifestError::Inconsistent));
        let big = pack(&[MAX_INLINE_LEN as u64, 1]);
        assert_eq!(big.validate(), Err(ManifestError::Inconsistent));
        let mut segmented = pack(&[1, 2]);
        segmented.segment_size = 1 << 20;
        segmented.segments = alloc::vec![SegmentInfo {
            ciphertext_len: 1,
            header_mac: [0; 32]
        }];
        assert_eq!(segmented.validate(), Err(ManifestError::Inconsistent));
        let mut inline_with_segments = pack(&[1]);
        inline_with_segments.segments = segmented.segments.clone();
        assert_eq!(
            inline_with_segments.validate(),
            Err(ManifestError::Inconsistent)
        );
        let mut empty = pack(&[]);
        empty.entries.clear();
        assert_eq!(empty.validate(), Err(ManifestError::Inconsistent));
        let too_many = pack(&[0; MAX_ENTRIES + 1]);
        assert_eq!(too_many.validate(), Err(ManifestError::TooManySegments));
        let mut long_paths = pack(&[0; 300]);
        for e in &mut long_paths.entries {
            e.path.push_str(&"x".repeat(MAX_PATH_LEN - 16));
        }
        assert_eq!(long_paths.validate(), Err(ManifestError::PathTooLong));
    }

    #[test]
    fn empty_file_and_directory_are_valid() {
        assert!(sample(0, 1 << 20).validate().is_ok());
        assert!(sample(0, 0).validate().is_ok());
        let mut dir = sample(0, 0);
        dir.entries[0].kind = EntryKind::Directory;
        dir.entries[0].sha256 = [0; 32];
        assert!(dir.validate().is_ok());
        dir.entries[0].size = 1;
        assert_eq!(dir.validate(), Err(ManifestError::Inconsistent));
    }

    #[test]
    fn inconsistent_segments_are_refused() {
        let mut m = sample(3 << 20, 1 << 20);
        m.segments.pop();
        assert_eq!(m.validate(), Err(ManifestError::Inconsistent));
        // A segment size the wire cannot carry.
        let m = sample(3 << 10, 1 << 10);
        assert_eq!(m.validate(), Err(ManifestError::Inconsistent));
    }

    #[test]
    fn an_approval_travels_and_its_limits_hold() {
        let mut m = sample(10, 1 << 20);
        m.approval = Some(Approval {
            request: b"version = 1\n".to_vec(),
            signatures: alloc::vec![b"untrusted comment: x\n".to_vec(); 2],
        });
        assert_eq!(Manifest::from_bytes(&m.to_bytes().unwrap()).unwrap(), m);
        // A manifest of version 3 (no approval field) is refused by its version byte.
        let mut old = sample(10, 1 << 20).to_bytes().unwrap();
        old.pop();
        old[0] = 3;
        assert_eq!(Manifest::from_bytes(&old), Err(ManifestError::Version));
        let mut big = m.clone();
        if let Some(a) = big.approval.as_mut() {
            a.request = alloc::vec![b'x'; MAX_REQUEST_LEN + 1];
        }
        assert_eq!(big.validate(), Err(ManifestError::Approval));
        let mut many = m.clone();
        if let Some(a) = many.approval.as_mut() {
            a.signatures = alloc::vec![alloc::vec![0; 8]; MAX_APPROVAL_SIGNATURES + 1];
        }
        assert_eq!(many.validate(), Err(ManifestError::Approval));
        let mut long = m;
        if let Some(a) = long.approval.as_mut() {
            a.signatures[1] = alloc::vec![0; MAX_SIGNATURE_LEN + 1];
        }
        assert_eq!(long.validate(), Err(ManifestError::Approval));
    }

    #[test]
    fn limits_are_enforced() {
        let mut m = sample(10, 1 << 20);
        m.entries[0].mode = 0o100644;
        assert_eq!(m.validate(), Err(ManifestError::Mode));
        let mut m = sample(10, 1 << 20);
        m.entries[0].path = "a".repeat(MAX_PATH_LEN + 1);
        assert_eq!(m.validate(), Err(ManifestError::PathTooLong));
        let mut bytes = sample(10, 1 << 20).to_bytes().unwrap();
        bytes[0] = 2;
        assert_eq!(Manifest::from_bytes(&bytes), Err(ManifestError::Version));
        let mut bytes = sample(10, 1 << 20).to_bytes().unwrap();
        bytes.push(0);
        assert_eq!(Manifest::from_bytes(&bytes), Err(ManifestError::Malformed));
        assert_eq!(
            Manifest::from_bytes(&[MANIFEST_VERSION, 0xff, 0xff]),
            Err(ManifestError::Malformed)
        );
    }
}
