//! What a file is, from its first bytes: never from its name (a pickle renamed
//! `weights.safetensors` is still a pickle).

/// Bytes [`sniff`] looks at (a tar header's magic ends at byte 262).
pub const SNIFF_LEN: usize = 512;

/// A file's type by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A pickle stream of protocol 2 to 5 (starts with the `PROTO` opcode).
    Pickle,
    /// A zip archive (also a PyTorch checkpoint, a NumPy `.npz`).
    Zip,
    /// A POSIX tar archive.
    Tar,
    /// A NumPy `.npy` array (its header says whether it holds objects, i.e. pickles).
    Numpy,
    /// Looks like safetensors: a plausible 8-byte header length, then `{`.
    Safetensors,
    /// None of these.
    Other,
}

/// The type of a file of `file_len` bytes that starts with `head` (up to [`SNIFF_LEN`]).
pub fn sniff(head: &[u8], file_len: u64) -> Kind {
    match head {
        [0x80, 2..=5, ..] => Kind::Pickle,
        [b'P', b'K', 3, 4, ..] | [b'P', b'K', 5, 6, ..] => Kind::Zip,
        [0x93, b'N', b'U', b'M', b'P', b'Y', ..] => Kind::Numpy,
        _ if head.get(257..262) == Some(b"ustar") => Kind::Tar,
        [l0, l1, l2, l3, l4, l5, l6, l7, b'{', ..] => {
            let len = u64::from_le_bytes([*l0, *l1, *l2, *l3, *l4, *l5, *l6, *l7]);
            if len >= 2 && len <= file_len.saturating_sub(8) {
                Kind::Safetensors
            } else {
                Kind::Other
            }
        }
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_the_bytes() {
        assert_eq!(sniff(b"\x80\x04\x95", 100), Kind::Pickle);
        assert_eq!(sniff(b"\x80\x01", 100), Kind::Other);
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
    }
}
