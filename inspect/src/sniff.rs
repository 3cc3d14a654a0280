//! What a file is, from its bytes: never from its name (a pickle renamed
//! `weights.safetensors` is still a pickle).
//!
//! A file can be several things at once — a polyglot: a tar header's magic sits at byte 257,
//! where a pickle, a NumPy or a safetensors header may already have begun, and a zip is
//! found by readers at its *end* (`zipmap::find`), whatever its first bytes. So the head
//! gives a set of [`Kinds`], not one, and every inspector that claims any of them checks it.

/// Bytes [`kinds`] looks at (a tar header's magic ends at byte 262).
pub const SNIFF_LEN: usize = 512;

/// A file's type by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A pickle stream that starts with the `PROTO` opcode (protocols 0 to 5).
    Pickle,
    /// A zip archive (also a PyTorch checkpoint, a NumPy `.npz`).
    Zip,
    /// A POSIX tar archive.
    Tar,
    /// A NumPy `.npy` array (its header says whether it holds objects, i.e. pickles).
    Numpy,
    /// Looks like safetensors: a plausible 8-byte header length, then `{`.
    Safetensors,
    /// Compressed ([`Compression`]: gzip, zlib, bzip2, xz, lzma, zstd, lz4).
    Compressed,
    /// A GGUF model (llama.cpp): `GGUF` magic.
    Gguf,
    /// An HDF5 file (legacy Keras models, datasets): its signature at byte 0.
    Hdf5,
    /// None of these.
    Other,
}

impl Kind {
    /// Every kind but [`Kind::Other`].
    pub const ALL: [Kind; 8] = [
        Kind::Pickle,
        Kind::Zip,
        Kind::Tar,
        Kind::Numpy,
        Kind::Safetensors,
        Kind::Compressed,
        Kind::Gguf,
        Kind::Hdf5,
    ];

    fn bit(self) -> u16 {
        1 << self as u8
    }

    /// Its name, as `approvals.toml` rules name types (`sluice_common::approval::CONTENT_TYPES`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pickle => "pickle",
            Kind::Zip => "zip",
            Kind::Tar => "tar",
            Kind::Numpy => "numpy",
            Kind::Safetensors => "safetensors",
            Kind::Compressed => "compressed",
            Kind::Gguf => "gguf",
            Kind::Hdf5 => "hdf5",
            Kind::Other => "other",
        }
    }
}

/// The kinds a file is at once (a set; empty means none of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kinds(u16);

impl Kinds {
    /// Whether `kind` is among them.
    pub fn has(self, kind: Kind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// These and `kind`.
    #[must_use]
    pub fn with(self, kind: Kind) -> Kinds {
        Kinds(self.0 | kind.bit())
    }

    /// Whether there is none.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Their names ([`Kind::name`]).
    pub fn names(self) -> Vec<&'static str> {
        (Kind::ALL.into_iter())
            .filter(|k| self.has(*k))
            .map(Kind::name)
            .collect()
    }
}

impl From<Kind> for Kinds {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Other => Kinds::default(),
            kind => Kinds(kind.bit()),
        }
    }
}

/// Every kind a file of `file_len` bytes that starts with `head` (up to [`SNIFF_LEN`]) is by
/// its first bytes: magic at byte 0 (pickle, zip, NumPy, safetensors) and a tar header's magic
/// at byte 257 are looked at independently. A zip's end record is looked for separately.
pub fn kinds(head: &[u8], file_len: u64) -> Kinds {
    let mut kinds = Kinds::default();
    match head {
        // PROTO of any protocol CPython reads (0 and 1 are legal, if never written so), then
        // an opcode: the unpickler stops at once on anything else (a safetensors header
        // length of 640 bytes starts `80 02 00`).
        [0x80, 0..=5, op, ..] if is_pickle_opcode(*op) => kinds = kinds.with(Kind::Pickle),
        [b'P', b'K', 3, 4, ..] | [b'P', b'K', 5, 6, ..] => kinds = kinds.with(Kind::Zip),
        [0x93, b'N', b'U', b'M', b'P', b'Y', ..] => kinds = kinds.with(Kind::Numpy),
        [b'G', b'G', b'U', b'F', ..] => kinds = kinds.with(Kind::Gguf),
        [0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n', ..] => kinds = kinds.with(Kind::Hdf5),
        _ => {}
    }
    // Looked at whatever the first bytes also are: a header length can spell another magic
    // (67 324 752 bytes is `PK\x03\x04`, 2 622 080 starts `80 02 28`), and the file still
    // loads as safetensors.
    if let [l0, l1, l2, l3, l4, l5, l6, l7, b'{', ..] = head {
        let len = u64::from_le_bytes([*l0, *l1, *l2, *l3, *l4, *l5, *l6, *l7]);
        if len >= 2 && len <= file_len.saturating_sub(8) {
            kinds = kinds.with(Kind::Safetensors);
        }
    }
    // A zlib or lzma magic is two bytes, which a safetensors header length can be (40 056
    // bytes is `78 9c`): such a file is safetensors, and the safetensors inspector refuses it
    // if it is not. Any other compressed data that does not decompress is refused.
    let weak = matches!(
        Compression::of(head),
        Some(Compression::Zlib | Compression::Lzma)
    );
    if Compression::of(head).is_some() && !(weak && kinds.has(Kind::Safetensors)) {
        kinds = kinds.with(Kind::Compressed);
    }
    if head.get(257..262) == Some(b"ustar") {
        kinds = kinds.with(Kind::Tar);
    }
    kinds
}

/// Every opcode CPython's unpickler knows (`pickle.py`'s table, protocols 0 to 5).
pub fn is_pickle_opcode(op: u8) -> bool {
    matches!(
        op,
        b'(' | b'.'
            | b'0'
            | b'1'
            | b'2'
            | b'F'
            | b'I'
            | b'J'
            | b'K'
            | b'L'
            | b'M'
            | b'N'
            | b'P'
            | b'Q'
            | b'R'
            | b'S'
            | b'T'
            | b'U'
            | b'V'
            | b'X'
            | b'a'
            | b'b'
            | b'c'
            | b'd'
            | b'}'
            | b'e'
            | b'g'
            | b'h'
            | b'i'
            | b'j'
            | b'l'
            | b']'
            | b'o'
            | b'p'
            | b'q'
            | b'r'
            | b's'
            | b't'
            | b')'
            | b'u'
            | b'G'
            | b'B'
            | b'C'
            | 0x80..=0x98
    )
}

/// The first kind of a file that starts with `head` (in the order of [`Kind`]), or
/// [`Kind::Other`]; [`kinds`] has all of them.
pub fn sniff(head: &[u8], file_len: u64) -> Kind {
    let found = kinds(head, file_len);
    [
        Kind::Pickle,
        Kind::Zip,
        Kind::Numpy,
        Kind::Tar,
        Kind::Safetensors,
        Kind::Compressed,
        Kind::Gguf,
        Kind::Hdf5,
    ]
    .into_iter()
    .find(|k| found.has(*k))
    .unwrap_or(Kind::Other)
}

/// A compression format, by its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    /// A zlib stream as `zlib.compress` writes it (joblib's `zlib`): `0x78`, then a flag
    /// byte that checks.
    Zlib,
    Bzip2,
    Xz,
    /// The `.lzma` ("alone") format, as joblib tells it: `0x5d 0x00`.
    Lzma,
    /// joblib's old format: `ZF`, the length in hex, then zlib.
    JoblibZfile,
    /// zstd, also behind skippable frames (`pzstd` writes one first).
    Zstd,
    Lz4,
}

impl Compression {
    /// The format a file starting with `head` is compressed with.
    pub fn of(head: &[u8]) -> Option<Compression> {
        Some(match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [b'B', b'Z', b'h', b'1'..=b'9', ..] => Compression::Bzip2,
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Compression::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] | [0x50..=0x5f, 0x2a, 0x4d, 0x18, ..] => Compression::Zstd,
            [0x04, 0x22, 0x4d, 0x18, ..] => Compression::Lz4,
            [b'Z', b'F', b'0', b'x', ..] => Compression::JoblibZfile,
            [0x5d, 0x00, ..] => Compression::Lzma,
            [0x78, flags, ..] if (0x7800 | u16::from(*flags)) % 31 == 0 && flags & 0x20 == 0 => {
                Compression::Zlib
            }
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zlib => "zlib",
            Compression::Bzip2 => "bzip2",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::JoblibZfile => "joblib zlib",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kinds_are_the_types_approval_rules_may_name() {
        let names: Vec<&str> = super::Kind::ALL
            .into_iter()
            .map(super::Kind::name)
            .collect();
        assert_eq!(names, sluice_common::approval::CONTENT_TYPES);
    }

    use super::*;

    #[test]
    fn types_come_from_the_bytes() {
        assert_eq!(sniff(b"\x80\x04\x95", 100), Kind::Pickle);
        assert_eq!(sniff(b"\x80\x01N.", 100), Kind::Pickle);
        assert_eq!(sniff(b"\x80\x06N.", 100), Kind::Other);
        assert_eq!(
            sniff(b"\x80\x02\x00\x00", 100),
            Kind::Other,
            "no opcode after PROTO"
        );
        assert_eq!(sniff(b"PK\x03\x04rest", 100), Kind::Zip);
        assert_eq!(sniff(b"\x93NUMPY\x01\x00", 100), Kind::Numpy);
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(sniff(&tar, 512), Kind::Tar);
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        assert_eq!(sniff(&st, 10), Kind::Safetensors);
        assert_eq!(sniff(&st, 9), Kind::Other, "a header longer than the file");
        assert_eq!(sniff(b"plain text", 10), Kind::Other);
        assert_eq!(sniff(b"", 0), Kind::Other);
        assert!(kinds(b"plain text", 10).is_empty());
    }

    #[test]
    fn a_head_that_is_two_things_is_both() {
        // A complete pickle in a tar header's name field: pickle.load and tarfile both read it.
        let mut both = vec![0u8; 512];
        both[..5].copy_from_slice(b"\x80\x02K\x01.");
        both[257..262].copy_from_slice(b"ustar");
        let found = kinds(&both, 512);
        assert!(found.has(Kind::Pickle) && found.has(Kind::Tar), "{found:?}");
        assert!(!found.has(Kind::Zip));
        assert_eq!(sniff(&both, 512), Kind::Pickle);
        assert_eq!(Kinds::from(Kind::Other), Kinds::default());
        assert!(Kinds::from(Kind::Zip).has(Kind::Zip));
    }
}
