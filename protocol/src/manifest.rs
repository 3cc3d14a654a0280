//! The manifest: what an object is, signed by the sender and encrypted to the receiver.
//!
//! It travels in the object's [`BlockKind::Manifest`](crate::wire::BlockKind) block after the
//! data segments (the segment hashes are known only once the content has been read). Nothing
//! in it crosses the link in clear: the daemons sign the postcard bytes of [`Manifest`] and
//! age-encrypt the resulting [`SignedManifest`].
//!
//! ```text
//!  manifest block data = age( postcard(SignedManifest { manifest: postcard(Manifest), signature }) )
//! ```
//!
//! Decoding enforces hard limits so a hostile (but correctly signed) manifest cannot make the
//! receiver allocate without bound; the path itself is checked again by the receiver before
//! anything touches the file system.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::wire::{ObjectId, SessionId};

/// Manifest format version inside the signed bytes (2: adds `sequence`, the freshness that
/// lets a receiver refuse a replayed older version of a path).
pub const MANIFEST_VERSION: u8 = 2;
/// Longest relative path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Most segments one object may have (1 TiB at the default 1 MiB segment size).
pub const MAX_SEGMENTS: usize = 1 << 20;
/// Longest encoded manifest or signed envelope accepted.
pub const MAX_ENCODED_LEN: usize = 64 + MAX_PATH_LEN + MAX_SEGMENTS * 40 + 1024;
/// Longest signature accepted inside the envelope.
pub const MAX_SIGNATURE_LEN: usize = 1024;

/// What kind of file-system entry an object recreates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file (also a stream read from stdin).
    File,
    /// A directory (possibly empty); it has no segments.
    Directory,
}

/// One encrypted segment of an object's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// Ciphertext bytes: the block length of the segment's data block.
    pub ciphertext_len: u32,
    /// SHA-256 of the ciphertext, checked right after FEC decoding.
    pub ciphertext_sha256: [u8; 32],
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
    /// Relative path with `/` separators, as the sender saw it.
    pub path: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Plaintext length in bytes.
    pub size: u64,
    /// Unix permission bits (`0o7777` at most).
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime_secs: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nanos: u32,
    /// Plaintext bytes per segment (the last one may be shorter).
    pub segment_size: u32,
    /// SHA-256 of the whole plaintext.
    pub sha256: [u8; 32],
    /// The encrypted segments, in order.
    pub segments: Vec<SegmentInfo>,
}

/// A manifest plus the sender's signature over its exact bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedManifest {
    /// `postcard` bytes of a [`Manifest`]: what the signature covers.
    pub manifest: Vec<u8>,
    /// Detached signature (a minisign signature file's bytes).
    pub signature: Vec<u8>,
}

/// Why manifest bytes were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestError {
    /// Longer than [`MAX_ENCODED_LEN`].
    TooLong,
    /// Does not decode, or has trailing bytes.
    Malformed,
    /// Unknown manifest version.
    Version,
    /// Path longer than [`MAX_PATH_LEN`].
    PathTooLong,
    /// More than [`MAX_SEGMENTS`] segments.
    TooManySegments,
    /// Sizes and segments disagree, or a directory has content.
    Inconsistent,
    /// Mode has bits outside `0o7777`.
    Mode,
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

    /// Checks limits and that sizes, segments and kind agree.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.version != MANIFEST_VERSION {
            return Err(ManifestError::Version);
        }
        if self.path.len() > MAX_PATH_LEN {
            return Err(ManifestError::PathTooLong);
        }
        if self.segments.len() > MAX_SEGMENTS {
            return Err(ManifestError::TooManySegments);
        }
        if self.mode & !0o7777 != 0 {
            return Err(ManifestError::Mode);
        }
        let expected_segments = match self.kind {
            EntryKind::Directory => 0,
            EntryKind::File if self.segment_size == 0 => {
                return if self.size == 0 && self.segments.is_empty() {
                    Ok(())
                } else {
                    Err(ManifestError::Inconsistent)
                };
            }
            EntryKind::File => self.size.div_ceil(u64::from(self.segment_size)),
        };
        if self.kind == EntryKind::Directory && self.size != 0 {
            return Err(ManifestError::Inconsistent);
        }
        if self.segments.len() as u64 != expected_segments {
            return Err(ManifestError::Inconsistent);
        }
        Ok(())
    }

    /// Plaintext bytes segment `index` holds, or `None` past the end.
    pub fn segment_plain_len(&self, index: usize) -> Option<u64> {
        if index >= self.segments.len() {
            return None;
        }
        let start = index as u64 * u64::from(self.segment_size);
        Some((self.size - start).min(u64::from(self.segment_size)))
    }
}

impl SignedManifest {
    /// Encodes the envelope (the plaintext the daemons encrypt).
    pub fn to_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        let bytes = postcard::to_allocvec(self).map_err(|_| ManifestError::Malformed)?;
        if bytes.len() > MAX_ENCODED_LEN + MAX_SIGNATURE_LEN + 16 {
            return Err(ManifestError::TooLong);
        }
        Ok(bytes)
    }

    /// Decodes the envelope; the signature is not checked here.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_ENCODED_LEN + MAX_SIGNATURE_LEN + 16 {
            return Err(ManifestError::TooLong);
        }
        let (envelope, rest) = postcard::take_from_bytes::<SignedManifest>(bytes)
            .map_err(|_| ManifestError::Malformed)?;
        if !rest.is_empty()
            || envelope.manifest.len() > MAX_ENCODED_LEN
            || envelope.signature.len() > MAX_SIGNATURE_LEN
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
            path: "data/ünï code/file 1.bin".into(),
            kind: EntryKind::File,
            size,
            mode: 0o644,
            mtime_secs: 1_700_000_000,
            mtime_nanos: 5,
            segment_size,
            sha256: [9; 32],
            segments: (0..count)
                .map(|i| SegmentInfo {
                    ciphertext_len: 100 + i as u32,
                    ciphertext_sha256: [i as u8; 32],
                })
                .collect(),
        }
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
        let m = sample(3000, 1024);
        let mut bytes = m.to_bytes().unwrap();
        // Re-encode the one-byte path length as a two-byte over-long varint.
        let at = bytes
            .iter()
            .position(|b| usize::from(*b) == m.path.len())
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
        };
        assert_eq!(
            SignedManifest::from_bytes(&env.to_bytes().unwrap()).unwrap(),
            env
        );
    }

    #[test]
    fn empty_file_and_directory_are_valid() {
        assert!(sample(0, 1 << 20).validate().is_ok());
        let mut dir = sample(0, 0);
        dir.kind = EntryKind::Directory;
        assert!(dir.validate().is_ok());
        dir.size = 1;
        assert_eq!(dir.validate(), Err(ManifestError::Inconsistent));
    }

    #[test]
    fn inconsistent_segments_are_refused() {
        let mut m = sample(3 << 20, 1 << 20);
        m.segments.pop();
        assert_eq!(m.validate(), Err(ManifestError::Inconsistent));
    }

    #[test]
    fn limits_are_enforced() {
        let mut m = sample(10, 1 << 20);
        m.mode = 0o100644;
        assert_eq!(m.validate(), Err(ManifestError::Mode));
        let mut m = sample(10, 1 << 20);
        m.path = "a".repeat(MAX_PATH_LEN + 1);
        assert_eq!(m.validate(), Err(ManifestError::PathTooLong));
        let mut bytes = sample(10, 1 << 20).to_bytes().unwrap();
        bytes[0] = 1;
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
